"""The shapes issue's targets, against native PyTorch in the same run: compiles when sizes change, dynamic kernels'
speed. Each part starts from empty kernel caches (memory and disk) and prints one summary line per target.

    python benchmarks/shapes.py [--parts gen,enc,img,speed] [--quick]

gen: a GPT-2-style decoder generating greedily with its KV cache; enc: a BERT-style encoder over 12 lengths;
img: ResNet18 at five image sizes; speed: dynamic vs static kernel time per distinct call (ResNet18, bench.py's
BERT layer), ResNet18 warm with dynamic=always, warm generation steps on dynamic vs static kernels.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (per_call, geomean, line, interleaved, BertLayer, _Record)

import torch_mlir_eager as tme  # noqa: E402
from torch_mlir_eager import compiler, shapes, spec  # noqa: E402


def fresh() -> None:
    """Empty kernel caches: memory, the call families, and a new disk cache directory."""
    compiler.cache().clear()
    shapes.reset()
    tme.reset_report()


def compiles() -> int:
    return tme.report().to_dict()["totals"]["compiles"]


def gpt2():
    import transformers
    cfg = transformers.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=1000, n_positions=256)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def generate(model, prompt_len: int, new: int, mlir: bool = True):
    ids = torch.randint(0, 1000, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        if not mlir:
            return model.generate(ids, **kw)
        with tme.enable():
            return model.generate(ids, **kw)


def part_gen(quick: bool) -> list:
    model = gpt2()
    out = []
    fresh()
    t0 = time.perf_counter()
    generate(model, 6, 4)
    c4, t4 = compiles(), time.perf_counter() - t0
    fresh()
    n = 24 if quick else 64
    t0 = time.perf_counter()
    got = generate(model, 6, n)
    c64, t64 = compiles(), time.perf_counter() - t0
    t0 = time.perf_counter()
    want = generate(model, 6, n, mlir=False)
    t_nat = time.perf_counter() - t0
    assert torch.equal(got, want), "generation differs from native"
    share = tme.report().to_dict()["totals"]["mlir_share"]
    out.append(bench.line("1 generation", c64 <= 1.1 * c4,
                          f"compiles for {n} new tokens {c64} vs {c4} for 4 = {c64 / c4:.2f}x (target <= 1.1x); "
                          f"first run {t64:.1f} s ({t4:.1f} s for 4) vs native {t_nat:.2f} s; {100 * share:.1f}% through MLIR"))
    before = compiles()
    tme.reset_report()
    got = generate(model, 11, n)
    assert torch.equal(got, generate(model, 11, n, mlir=False))
    rep = tme.report().to_dict()
    second = rep["totals"]["compiles"]
    ops = sorted(r["op"] for r in rep["ops"] if r["compiles"])
    out.append(bench.line("1 generation, second prompt length", True,
                          f"{second} compiles (ops: {', '.join(o.replace('aten.', '') for o in ops)[:300]})"))
    tme.reset_report()
    got = generate(model, 17, n - 9)
    assert torch.equal(got, generate(model, 17, n - 9, mlir=False))
    third = compiles()
    out.append(bench.line("1 generation, third prompt length", third <= 3,
                          f"{third} compiles for prompt 17, {n - 9} tokens (target <= 3); first prompt {before}"))
    return out


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        import transformers
        cfg = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=256, vocab_size=1000, max_position_embeddings=256)
        self.bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    def forward(self, ids):
        return self.bert(ids).last_hidden_state


def part_enc(quick: bool) -> list:
    torch.manual_seed(0)
    model = Encoder().eval()
    lengths = [8, 16, 24, 32, 40, 48, 64, 72, 80, 96, 112, 128]
    fresh()
    per = []
    with torch.no_grad():
        for n in lengths:
            ids = torch.randint(0, 1000, (2, n), generator=torch.Generator().manual_seed(n))
            c = compiles()
            with tme.enable():
                got = model(ids)
            torch.testing.assert_close(got, model(ids), rtol=1e-4, atol=1e-4)
            per.append(compiles() - c)
    after = sum(per[3:])
    share = tme.report().to_dict()["totals"]["mlir_share"]
    return [bench.line("2 encoder over lengths", after == 0,
                       f"compiles per length {per}: {after} after the first 3 (target 0); "
                       f"{100 * share:.1f}% through MLIR")]


def part_img(quick: bool) -> list:
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    sizes = [160, 192, 224, 256, 288]
    fresh()
    per, times = [], []
    with torch.no_grad():
        for s in sizes:
            x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(s))
            c, t0 = compiles(), time.perf_counter()
            with tme.enable():
                got = model(x)
            times.append(time.perf_counter() - t0)
            torch.testing.assert_close(got, model(x), rtol=1e-3, atol=1e-4)
            per.append(compiles() - c)
    after = sum(per[2:])
    t = tme.report().to_dict()["totals"]
    return [bench.line("3 images", after == 0, f"compiles per size {per}: {after} after the first 2 (target 0); "
                       f"first forward per size {', '.join(f'{t:.1f}' for t in times)} s; "
                       f"{t['mlir_calls']} of {t['mlir_calls'] + t['fallback_calls']} calls through MLIR")]


def _distinct_calls(model, x) -> dict:
    rec = bench._Record()
    with torch.no_grad(), rec:
        model(x)
    return rec.calls


def _lookup(key):
    try:
        return compiler.cache().lookup(key)
    except Exception:
        return None


def kernel_ratios(model, x, other, n: int) -> tuple:
    """Per distinct call of model(x): the static kernel (dynamic=never) against the kernel the default policy
    serves it with after the model ran at another size (`other`): dynamic in the dims that varied."""
    calls = _distinct_calls(model, x)
    kernels = {}
    for mode, inputs in (("never", [x]), ("auto", [other, x])):
        with tme.config.override(dynamic=mode), torch.no_grad():
            fresh()
            for inp in inputs:
                with tme.enable():
                    model(inp)
            kernels[mode] = {key: _lookup(key) for key in calls}
    rows, ratios, static_only = [], [], []
    for key, (func, args, kwargs) in calls.items():
        ks, kd = kernels["never"][key], kernels["auto"][key]
        if ks is None or kd is None:
            continue
        if kd.dynamic is None:
            static_only.append(str(func).replace("aten.", ""))
            continue
        _, tensors = spec.flatten(str(func), args, kwargs)
        ins_s, ins_d = ks.prepare(tensors), kd.prepare(tensors)
        t_s, t_d = bench.interleaved([lambda: ks(ins_s), lambda: kd(ins_d)], n, 3)
        ratios.append(t_d / t_s)
        shp = ",".join("x".join(map(str, t.shape)) for t in tensors)
        rows.append((f"{str(func).replace('aten.', '')} {shp}"[:60], t_s * 1e6, t_d * 1e6, t_d / t_s))
    return rows, ratios, static_only


def part_speed(quick: bool) -> list:
    import torchvision
    out = []
    n = 20 if quick else 50
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    layer = bench.BertLayer().eval()
    xb = torch.randn(4, 128, 256)
    all_rows, all_ratios, static_only = [], [], []
    for name, m, inp, other in (("ResNet18", resnet, x, torch.randn(1, 3, 192, 192)),
                                ("BERT layer", layer, xb, torch.randn(4, 96, 256))):
        rows, ratios, st = kernel_ratios(m, inp, other, n)
        all_rows += rows
        all_ratios += ratios
        static_only += st
    print(f"{'call':60s} {'static us':>10s} {'dynamic us':>10s} {'ratio':>6s}")
    for r in sorted(all_rows, key=lambda r: -r[3]):
        print(f"{r[0]:60s} {r[1]:10.1f} {r[2]:10.1f} {r[3]:6.2f}")
    g, worst = bench.geomean(all_ratios), max(all_ratios)
    out.append(bench.line("4 dynamic kernel speed", g <= 1.15 and worst <= 1.5,
                          f"dynamic / static per distinct call ({len(all_ratios)}, dynamic in the dims a second "
                          f"input size varied): geomean {g:.2f}x (target <= 1.15), worst {worst:.2f}x (target <= "
                          f"1.5); left static: {', '.join(static_only) or 'none'}"))
    # ResNet18 warm with dynamic=always, static kernels (dynamic=never) and native alternating forward by forward,
    # each mode with its own kernel cache and call families: medians of 11 (this VM's drift, as below)
    states, models = {}, {}
    for mode in ("never", "always"):
        with tme.config.override(dynamic=mode), torch.no_grad():
            _new_state()
            model = tme.wrap(copy.deepcopy(resnet))
            xw = tme.wrap(x)
            got = tme.unwrap(model(xw))
            torch.testing.assert_close(got, resnet(x), rtol=1e-3, atol=1e-4)
            model(xw)
            states[mode], models[mode] = _state(), (model, xw)
    rn = {"never": [], "always": [], "native": []}
    with torch.no_grad():
        for _ in range(11):
            rn["native"].append(_timed(lambda: resnet(x)))
            for mode in ("never", "always"):
                _swap_in(states[mode])
                model, xw = models[mode]
                with tme.config.override(dynamic=mode):
                    rn[mode].append(_timed(lambda: model(xw)))
    _new_state()
    t_nat, t_st, t_ours = (statistics.median(rn[m]) for m in ("native", "never", "always"))
    out.append(bench.line("4 ResNet18 warm, dynamic=always", t_ours / t_nat <= 1.35,
                          f"{t_ours * 1e3:.1f} ms vs native {t_nat * 1e3:.1f} ms = {t_ours / t_nat:.2f}x "
                          f"(target <= 1.35x); static kernels {t_st * 1e3:.1f} ms = {t_st / t_nat:.2f}x native, "
                          f"dynamic / static {t_ours / t_st:.2f}x (medians of 11 alternating)"))
    # warm generation steps: the same generation on static vs dynamic kernels. Each mode has its own kernel cache
    # and call families (swapped in before each of its generations), built from empty and warmed until a
    # generation compiles nothing (the default policy re-specializes a size that ran HOT_CALLS times on a dynamic
    # kernel: that compile is not a warm step); then the two modes alternate generation by generation, 9 each,
    # judged on the medians. One generation's time drifts by 2x over seconds on this VM (native's too, with two threads): blocks of
    # one mode then the other measured the drift, not the kernels.
    gen = gpt2()
    steps = 16
    states = {}
    for mode in ("never", "auto"):
        with tme.config.override(dynamic=mode):
            _new_state()
            for _ in range(8):
                c0 = compiles()
                generate(gen, 6, steps)
                if compiles() == c0:
                    break
            states[mode] = _state()
    times = {"never": [], "auto": []}
    for _ in range(9):
        for mode in ("never", "auto"):
            _swap_in(states[mode])
            with tme.config.override(dynamic=mode):
                c0 = compiles()
                t = _timed(lambda: generate(gen, 6, steps))
                if compiles() == c0:        # (a hot size re-specialized later than the warm-up: not a warm step)
                    times[mode].append(t)
    _new_state()
    t_native = min(_timed(lambda: generate(gen, 6, steps, mlir=False)) for _ in range(5))
    # judged on the medians: on this VM the best of 9 still swings 0.7x-1.2x between identical runs
    t_s, t_d = (statistics.median(times[m]) for m in ("never", "auto"))
    best = {m: min(v) * 1e3 for m, v in times.items()}
    out.append(bench.line("4 warm generation steps", t_d / t_s <= 1.2,
                          f"{steps} tokens on dynamic kernels {t_d * 1e3:.0f} ms vs static {t_s * 1e3:.0f} ms = "
                          f"{t_d / t_s:.2f}x (target <= 1.2x; medians of 9 alternating, best {best['auto']:.0f} / "
                          f"{best['never']:.0f} ms); native {t_native * 1e3:.0f} ms"))
    return out


def _new_state() -> None:
    """An empty kernel cache (a new one: the one before may be kept by _state) and no call families."""
    compiler._cache = None
    shapes.reset()


def _state() -> tuple:
    """The process's (kernel cache, call families), to keep beside another mode's (_swap_in)."""
    return compiler.cache(), dict(shapes._families)


def _swap_in(state) -> None:
    """Make (kernel cache, call families) the process's own: one mode's state among several kept side by side."""
    compiler._cache, families = state
    shapes.reset()
    shapes._families.update(families)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


PARTS = {"gen": part_gen, "enc": part_enc, "img": part_img, "speed": part_speed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    with tme.config.override(disk_cache=False):
        lines = []
        for p in a.parts.split(","):
            t0 = time.perf_counter()
            got = PARTS[p](a.quick)
            for l in got:
                print(l, flush=True)
            print(f"  ({p}: {time.perf_counter() - t0:.0f} s)", flush=True)
            lines += got
    print("\n".join(lines))
    return 0 if all(l.startswith("[PASS]") for l in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
