"""A real Hugging Face Trainer run for the tests: transformers' Trainer fine-tuning a tiny
random-weight Mixtral (router aux loss on) on a fixed synthetic corpus, on CPU. It never imports
the probe.

For every training step it appends one JSON line to --log with what the model itself computed
in that step's forward pass: per layer, the tokens each expert got (top-k over the softmax of
the router logits the model returned, the model's own routing), the auxiliary load-balancing
loss of that layer alone (transformers' load_balancing_loss_func on that layer's logits) and
its router z-loss (mean of logsumexp(logits)^2), the model's own aux_loss and loss outputs; and
a hash of every gradient after the backward pass. Two runs with the same seed, one watched by
the probe and one not, must log the same losses and gradient hashes step for step.
"""

import argparse
import hashlib
import json
import os
import sys
import threading
import time

import torch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each step")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing (recomputed forwards)")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    from transformers import MixtralConfig, MixtralForCausalLM, Trainer, TrainerCallback, TrainingArguments
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=256, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                           num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=args.experts, num_experts_per_tok=args.top_k,
                           max_position_embeddings=128, output_router_logits=True, router_aux_loss_coef=0.02)
    model = MixtralForCausalLM(config)
    generator = torch.Generator().manual_seed(1)
    corpus = torch.randint(0, 256, (64, args.seq), generator=generator)

    class Corpus(torch.utils.data.Dataset):
        def __len__(self):
            return corpus.shape[0]

        def __getitem__(self, i):
            return {"input_ids": corpus[i], "labels": corpus[i]}

    log = open(args.log, "a", buffering=1)
    log.write(json.dumps({"ready": True, "pid": os.getpid(), "steps": args.steps}) + "\n")

    class LoggingTrainer(Trainer):
        """The Trainer's own step, with what the model computed in it written down."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            self.step_outputs = outputs
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            out = self.step_outputs
            with torch.no_grad():
                counts, aux, z = [], [], []
                for logits in out.router_logits:
                    ids = torch.topk(torch.softmax(logits.float(), dim=-1), args.top_k, dim=-1).indices
                    counts.append(torch.bincount(ids.reshape(-1), minlength=args.experts).tolist())
                    aux.append(float(load_balancing_loss_func((logits,), args.experts, args.top_k, None)))
                    z.append(float(torch.logsumexp(logits, dim=-1).square().mean()))
                digest = hashlib.sha256()
                for name, p in model.named_parameters():
                    if p.grad is not None:
                        digest.update(name.encode())
                        digest.update(p.grad.detach().contiguous().numpy().tobytes())
            hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
            log.write(json.dumps({
                "pass": self.state.global_step, "counts": counts, "aux": aux, "z": z,
                "model_aux": float(out.aux_loss), "loss": float(out.loss), "grads": digest.hexdigest()[:24],
                "out": "%r" % float(out.loss), "hooks": hooks, "threads": sorted(t.name for t in threading.enumerate()),
            }) + "\n")
            return loss

    class Pace(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            if args.sleep:
                time.sleep(args.sleep)

    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    training = TrainingArguments(
        output_dir=args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.log)), "trainer-out"),
        max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=1e-3, warmup_steps=0,
        logging_steps=50, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
    )
    trainer = LoggingTrainer(model=model, args=training, train_dataset=Corpus(), callbacks=[Pace()])
    trainer.train()
    log.write(json.dumps({"done": True}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
