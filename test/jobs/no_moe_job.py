"""A torch job with no MoE layer (a dense transformers Llama), for the 'no MoE found' path."""
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(1)
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2)).eval()
x = torch.randint(0, 64, (1, 8))
print("ready", flush=True)
while True:
    with torch.no_grad():
        model(x)
    time.sleep(0.05)
