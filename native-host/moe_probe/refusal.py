"""The probe's answer to a request it will not carry out (src/protocol/probe.ts ProbeRefused).

A module of its own, free of any framework: the session refuses requests itself where no
request worker can run (a job without torch), and requests.py refuses the rest."""


def refusal(message, code, text):
    request_id = message.get("id") if isinstance(message, dict) else None
    request = message.get("t") if isinstance(message, dict) else None
    return {"t": "refused", "id": request_id if isinstance(request_id, int) and request_id >= 0 else 0,
            "request": request if request in ("explain", "expert-params") else "unknown",
            "code": code, "message": text}
