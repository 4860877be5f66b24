"""Training speed of `sweep train` beside a minimal PyTorch-eager Llama, in one run.

Driven by scripts/bench-train (which makes the venv and the binary). Two modes:

  bench_train.py drive --sweep BIN --shapes small,smollm2-135m --device cpu ...
      For each shape and method (full; LoRA r16 on every module), run `sweep run` on a one-point
      spec (AdamW, constant LR, random init), read its metrics.jsonl and result.json, run the
      reference below in a fresh process with the same shape, batch, sequence length, threads and
      precision, measure a 1024x1024x1024 matmul on the same threads, and print a table.

  bench_train.py ref --config JSON --method full|lora ...
      The reference: the same architecture written in plain PyTorch (RMSNorm, rotary embeddings,
      grouped-query attention through scaled_dot_product_attention, SwiGLU, tied or untied head;
      LoRA as W x + s B A x with A Kaiming-uniform and B zero), torch.optim.AdamW, gradient
      clipping and accumulation over micro-batches as `sweep train` does, bf16 by torch.autocast.
      Prints one JSON line.

Steady-state tokens/s is the median over the timed steps (the first `--warmup` steps dropped). The
FLOPs per token are the planner's (`sweep plan --json`), used for both sides.
"""

import argparse
import warnings
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The builtin shapes of src/model/config.rs that the benchmark uses:
# (vocab, hidden, intermediate, layers, heads, kv heads, tied, rope theta).
SHAPES = {
    "tiny": (264, 128, 352, 4, 4, 2, True, 10_000.0),
    "small": (264, 512, 1376, 8, 8, 4, True, 10_000.0),
    "smollm2-135m": (49_152, 576, 1536, 30, 9, 3, True, 100_000.0),
    "llama-1b": (32_000, 2048, 5632, 22, 32, 4, False, 10_000.0),
}
LORA_RANK = 16
H200_BF16_PEAK = 790e12  # dense bf16 FLOP/s the issue measures MFU against
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


def matmul_flops(device, kind, threads, n=1024):
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, elapsed = 0, 0.0
    start = time.perf_counter()
    while elapsed < 1.0:
        for _ in range(10 if device == "cpu" else 200):
            a @ b
        sync()
        reps += 10 if device == "cpu" else 200
        elapsed = time.perf_counter() - start
    return 2 * n**3 * reps / elapsed


# ---------------------------------------------------------------- the PyTorch-eager reference


def build_reference(shape, method, seed, device, checkpointing=False):
    import torch
    import torch.nn.functional as F
    from torch import nn

    vocab, d, ff, layers, heads, kv, tied, theta = shape
    hd = d // heads
    torch.manual_seed(seed)
    lora = method == "lora"

    class Linear(nn.Module):
        def __init__(self, out, inp):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(out, inp) * 0.02, requires_grad=not lora)
            if lora:
                bound = 1.0 / math.sqrt(inp)
                self.lora_a = nn.Parameter(torch.empty(LORA_RANK, inp).uniform_(-bound, bound))
                self.lora_b = nn.Parameter(torch.zeros(out, LORA_RANK))
                self.scale = 2.0 * LORA_RANK / LORA_RANK  # alpha = 2r

        def forward(self, x):
            y = F.linear(x, self.weight)
            if lora:
                y = y + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
            return y

    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.outer(torch.arange(4096, dtype=torch.float32), inv)
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(device), ang.sin().to(device)

    def rope(x):
        t = x.shape[2]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos[:t] + torch.cat([-x2, x1], dim=-1) * sin[:t]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_norm = nn.Parameter(torch.ones(d), requires_grad=not lora)
            self.post_norm = nn.Parameter(torch.ones(d), requires_grad=not lora)
            self.q, self.k = Linear(d, d), Linear(kv * hd, d)
            self.v, self.o = Linear(kv * hd, d), Linear(d, d)
            self.gate, self.up, self.down = Linear(ff, d), Linear(ff, d), Linear(d, ff)

        def forward(self, x):
            b, t, _ = x.shape
            h = F.rms_norm(x, (d,), self.input_norm, 1e-5)
            q = rope(self.q(h).view(b, t, heads, hd).transpose(1, 2))
            k = rope(self.k(h).view(b, t, kv, hd).transpose(1, 2))
            v = self.v(h).view(b, t, kv, hd).transpose(1, 2)
            if heads != kv:
                k = k.repeat_interleave(heads // kv, dim=1)
                v = v.repeat_interleave(heads // kv, dim=1)
            q, k = q.to(v.dtype), k.to(v.dtype)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(y.transpose(1, 2).reshape(b, t, d))
            h = F.rms_norm(x, (d,), self.post_norm, 1e-5)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Parameter(torch.randn(vocab, d) * 0.02, requires_grad=not lora)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.Parameter(torch.ones(d), requires_grad=not lora)
            self.head = (
                None
                if tied
                else nn.Parameter(torch.randn(vocab, d) * 0.02, requires_grad=not lora)
            )

        def forward(self, tokens):
            x = F.embedding(tokens, self.embed)
            for blk in self.blocks:
                if checkpointing and torch.is_grad_enabled():
                    x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
                else:
                    x = blk(x)
            x = F.rms_norm(x, (d,), self.norm, 1e-5)
            head = self.embed if self.head is None else self.head
            return F.linear(x, head).float()

    return Llama().to(device)


def run_reference(a):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    shape = SHAPES[a.shape]
    import torch.utils.checkpoint  # noqa: F401

    model = build_reference(shape, a.method, a.seed, a.device, a.checkpointing == "on")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed)
    vocab = shape[0]
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16")
    times = []
    for step in range(a.warmup + a.steps):
        tokens = torch.randint(0, vocab, (a.batch, a.seq + 1), generator=gen).to(a.device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        denom = a.batch * a.seq
        loss_sum = 0.0
        for chunk in tokens.split(a.micro):
            with autocast:
                logits = model(chunk[:, :-1])
            loss = F.cross_entropy(logits.view(-1, vocab), chunk[:, 1:].reshape(-1), reduction="sum") / denom
            loss.backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync()
        times.append(time.perf_counter() - start)
    steady = times[a.warmup :]
    out = {
        "tokens_per_s": a.batch * a.seq / statistics.median(steady),
        "steps": len(steady),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "final_loss": loss_sum,
    }
    if cuda:
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


# ---------------------------------------------------------------- the driver


SPEC = """name = "bench-{shape}-{ckpt}"
[model]
builtin = "{shape}"
init = "random"
[data]
regime = "cpt"
domain = "code"
target = "builtin:python"
source = "builtin:shakespeare"
[training]
optimizer = "adamw"
schedule = "constant"
warmup_fraction = 0.0
batch_size = {batch}
micro_batch_size = {micro}
seq_len = {seq}
precision = "{precision}"
log_every = 1
activation_checkpointing = {ckpt_on}
[evaluation]
metrics = ["target_loss"]
eval_tokens = {eval_tokens}
[grid]
method = ["full", "lora"]
token_budget = [{budget}]
seeds = 1
[grid.full]
learning_rate = [1e-4]
[grid.lora]
learning_rate = [1e-4]
rank = [{rank}]
alpha = "2r"
target_modules = ["all"]
"""


def ours(a, shape, ckpt, work):
    """Run both methods of one shape with `sweep run`; per method: tokens/s, params, RSS, flops."""
    budget = a.batch * a.seq * (a.warmup + a.steps)
    spec = work / f"bench-{shape}-{ckpt}.toml"
    spec.write_text(
        SPEC.format(
            shape=shape, batch=a.batch, micro=a.micro, seq=a.seq, precision=a.precision,
            eval_tokens=a.seq * 2, budget=budget, rank=LORA_RANK, ckpt=ckpt,
            ckpt_on="true" if ckpt == "on" else "false",
        )
    )
    env = dict(os.environ, SWEEP_DEVICE=a.device)
    plan = json.loads(
        subprocess.run(
            [a.sweep, "plan", str(spec), "--json", "--dry-run", "--results", str(work)],
            check=True, capture_output=True, text=True, env=env,
        ).stdout
    )
    flops = {g["method"]: g["cost"]["flops"] / g["cost"]["tokens"] for g in plan["groups"]}
    subprocess.run(
        [a.sweep, "run", str(spec), "--jobs", "1", "--threads", str(a.threads), "--results", str(work), "-q"],
        check=True, env=env,
    )
    out = {}
    for run_dir in sorted((work / f"bench-{shape}-{ckpt}" / "runs").iterdir()):
        run = json.loads((run_dir / "run.json").read_text())
        result = json.loads((run_dir / "result.json").read_text())
        if result["status"] != "completed":
            sys.exit(f"{run_dir}: {result['status']}: {result.get('error')}")
        lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
        # Steady-state steps: past the warmup, and not the last (it includes the evaluation).
        tps = [l["tokens_per_s"] for l in lines if l.get("tokens_per_s") and not l.get("eval") and l["step"] > a.warmup]
        if not tps:
            sys.exit(f"{run_dir}/metrics.jsonl: no steady-state steps; raise --steps")
        method = run["method"]
        out[method] = {
            "tokens_per_s": statistics.median(tps),
            "trainable_params": result["trainable_params"],
            "total_params": result["total_params"],
            "peak_rss_kib": result.get("peak_rss_kib"),
            "device": result.get("device"),
            "flops_per_token": flops[method],
        }
    return out


def reference(a, shape, method, ckpt):
    cmd = [
        sys.executable, __file__, "ref", "--shape", shape, "--method", method, "--checkpointing", ckpt,
        "--batch", str(a.batch), "--micro", str(a.micro), "--seq", str(a.seq),
        "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads),
        "--device", a.device, "--precision", a.precision,
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def human(x, unit=""):
    for k, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= k:
            return f"{x / k:.3g}{s}{unit}"
    return f"{x:.3g}{unit}"


def drive(a):
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    kind = a.precision if a.precision != "auto" else ("bf16" if a.device.startswith("cuda") else "f32")
    mm = matmul_flops(a.device, kind, a.threads)
    print(f"device {a.device}, {kind}, {a.threads} threads, batch {a.batch} x {a.seq} tokens "
          f"(micro-batch {a.micro}), {a.steps} timed steps after {a.warmup}")
    print(f"1024^3 matmul: {human(mm, 'FLOP/s')}" + (f"; MFU against {human(H200_BF16_PEAK, 'FLOP/s')} bf16" if a.device.startswith("cuda") else ""))
    cols = ["shape", "method", "ckpt", "params (train/total)", "sweep tok/s", "torch tok/s", "ratio",
            "sweep FLOP/s (% matmul)", "torch FLOP/s (% matmul)", "sweep RSS", "torch RSS"]
    if a.device.startswith("cuda"):
        cols += ["sweep MFU", "torch MFU", "torch GPU mem"]
    records = []
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|", flush=True)
    for shape, ckpt in [(s, c) for s in a.shapes.split(",") for c in a.checkpointing.split(",")]:
        mine = ours(a, shape, ckpt, work)
        for method in ("full", "lora"):
            m = mine[method]
            r = reference(a, shape, method, ckpt)
            if (m["trainable_params"], m["total_params"]) != (r["trainable_params"], r["total_params"]):
                sys.exit(f"{shape} {method}: parameter counts differ: sweep "
                         f"{m['trainable_params']}/{m['total_params']}, reference "
                         f"{r['trainable_params']}/{r['total_params']}; the reference is not the same model")
            f = m["flops_per_token"]
            ms, rs = m["tokens_per_s"] * f, r["tokens_per_s"] * f
            row = [shape, method, ckpt, f"{human(m['trainable_params'])}/{human(m['total_params'])}",
                   f"{m['tokens_per_s']:.1f}", f"{r['tokens_per_s']:.1f}",
                   f"{m['tokens_per_s'] / r['tokens_per_s']:.2f}x",
                   f"{human(ms)} ({100 * ms / mm:.0f}%)", f"{human(rs)} ({100 * rs / mm:.0f}%)",
                   human((m["peak_rss_kib"] or 0) * 1024, "B"), human(r["peak_rss_kib"] * 1024, "B")]
            if a.device.startswith("cuda"):
                row += [f"{100 * ms / H200_BF16_PEAK:.1f}%", f"{100 * rs / H200_BF16_PEAK:.1f}%",
                        human(r.get("peak_gpu_mib", 0) * 2**20, "B")]
            print("| " + " | ".join(row) + " |", flush=True)
            records.append({"shape": shape, "method": method, "checkpointing": ckpt, "sweep": m, "torch": r,
                            "matmul_flops": mm, "device": a.device, "kind": kind})
            if a.json:
                Path(a.json).write_text(json.dumps(records, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("drive", "ref"):
        s = sub.add_parser(name)
        s.add_argument("--batch", type=int, default=8)
        s.add_argument("--micro", type=int, default=8)
        s.add_argument("--seq", type=int, default=256)
        s.add_argument("--steps", type=int, default=5)
        s.add_argument("--warmup", type=int, default=2)
        s.add_argument("--threads", type=int, default=os.cpu_count())
        s.add_argument("--device", default="cpu")
        s.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16"])
        s.add_argument("--seed", type=int, default=0)
        if name == "drive":
            s.add_argument("--sweep", required=True, help="the sweep binary")
            s.add_argument("--shapes", default="small,smollm2-135m")
            s.add_argument("--json", help="also write the measurements here")
            s.add_argument("--checkpointing", default="off,on",
                           help="activation checkpointing rows: off, on, or off,on")
        else:
            s.add_argument("--shape", required=True, choices=sorted(SHAPES))
            s.add_argument("--method", required=True, choices=["full", "lora"])
            s.add_argument("--checkpointing", default="off", choices=["off", "on"])
    a = p.parse_args()
    if a.mode == "ref" and a.precision == "auto":
        a.precision = "bf16" if a.device.startswith("cuda") else "f32"
    (drive if a.mode == "drive" else run_reference)(a)


if __name__ == "__main__":
    main()
