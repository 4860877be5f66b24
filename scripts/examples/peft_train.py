#!/usr/bin/env python3
"""A Hugging Face PEFT trainer for `sweep`'s [trainer] command (README: "Sweep another trainer").

It fine-tunes a causal LM with LoRA (peft) or fully, on plain-text target data, and measures
learning (held-out target loss) and forgetting (held-out source loss) at every token checkpoint
the run asks for, writing them to RUN_DIR/metrics.jsonl as the contract says. A SIGTERM or
SIGUSR1 (a time limit, `sweep cancel`) checkpoints into RUN_DIR/peft-checkpoint.pt and exits;
started again, it resumes from there. Needs torch, transformers and peft:

    python3 -m venv .venv && .venv/bin/pip install torch transformers peft

and in the spec (scripts/examples/peft.toml is one):

    [trainer]
    command = [".venv/bin/python", "scripts/examples/peft_train.py", "--model", "{model}",
               "--target", "{target}", "--source", "{source}", "--method", "{method}",
               "--lr", "{learning_rate}", "--rank", "{rank}", "--alpha", "{alpha}",
               "--dropout", "{dropout}", "--modules", "{target_modules}",
               "--eval-at", "{eval_at}", "--batch-size", "{batch_size}",
               "--seq-len", "{seq_len}", "--seed", "{seed}", "--out", "{run_dir}"]
"""
import argparse
import json
import math
import os
import signal
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def read_text(path):
    """A file, or a folder's .py/.md/.txt files in order; builtin:NAME is data/NAME."""
    if path.startswith("builtin:"):
        path = os.path.join(os.environ.get("SWEEP_DATA", "data"), path[len("builtin:"):])
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.endswith((".py", ".md", ".txt")))
        return "\n".join(open(f, encoding="utf-8").read() for f in files)
    return open(path, encoding="utf-8").read()


def chunks(tok, path, seq_len):
    ids = tok(read_text(path), add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    if n < 2:
        sys.exit(f"{path}: {len(ids)} tokens, fewer than two sequences of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def held_out(x, n=64):
    """The last tenth of the sequences, at most n of them, held out; the rest to train on."""
    k = max(1, min(n, len(x) // 10))
    return x[:-k], x[-k:]


@torch.no_grad()
def loss_on(model, x, batch):
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(x), batch):
        b = x[i : i + batch]
        out = model(input_ids=b, labels=b)
        total += out.loss.item() * len(b)
        n += len(b)
    model.train()
    return total / n


def main():
    p = argparse.ArgumentParser()
    for a in ["--model", "--target", "--source", "--method", "--out", "--modules", "--eval-at"]:
        p.add_argument(a, required=a not in ("--modules",), default="")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--rank", default="")
    p.add_argument("--alpha", default="")
    p.add_argument("--dropout", default="0")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    stop = {"now": False}
    for s in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, lambda *_: stop.update(now=True))

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                 "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
        modules = [names.get(m, m) for m in a.modules.split(",") if m]
        model = get_peft_model(model, LoraConfig(r=int(a.rank), lora_alpha=float(a.alpha),
                                                 lora_dropout=float(a.dropout),
                                                 target_modules=modules))
    train, target_eval = held_out(chunks(tok, a.target, a.seq_len))
    _, source_eval = held_out(chunks(tok, a.source, a.seq_len))
    eval_at = [int(t) for t in a.eval_at.split(",") if t]
    per_step = a.batch_size * a.seq_len
    steps = math.ceil(eval_at[-1] / per_step)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)

    metrics = os.path.join(a.out, "metrics.jsonl")
    ckpt = os.path.join(a.out, "peft-checkpoint.pt")
    step = 0
    if os.path.exists(ckpt):
        state = torch.load(ckpt)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optim"])
        step = state["step"]
        # Keep the lines up to the checkpoint: what comes after is measured again.
        kept = [l for l in open(metrics) if json.loads(l)["tokens"] <= step * per_step]
        open(metrics, "w").writelines(kept)
    else:
        with open(metrics, "w") as f:
            f.write(json.dumps({"tokens": 0, "step": 0,
                                "target_loss": loss_on(model, target_eval, a.batch_size),
                                "source_loss": loss_on(model, source_eval, a.batch_size)}) + "\n")

    def save():
        trainable = {k: v for k, v in model.state_dict().items()
                     if any(v is q for q in params) or "lora_" in k or a.method == "full"}
        torch.save({"model": trainable, "optim": opt.state_dict(), "step": step}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    while step < steps:
        if stop["now"]:
            save()
            print(f"stopped after step {step}; checkpoint {ckpt}", file=sys.stderr)
            return
        idx = torch.randint(0, len(train), (a.batch_size,))
        b = train[idx]
        loss = model(input_ids=b, labels=b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        step += 1
        tokens = step * per_step
        line = {"tokens": tokens, "step": step, "lr": a.lr, "train_loss": loss.item()}
        due = [t for t in eval_at if (step - 1) * per_step < t <= tokens]
        if due or step == steps:
            line["target_loss"] = loss_on(model, target_eval, a.batch_size)
            line["source_loss"] = loss_on(model, source_eval, a.batch_size)
        with open(metrics, "a") as f:
            f.write(json.dumps(line) + "\n")
    save()


if __name__ == "__main__":
    main()
