"""The Triton kernels against the PyTorch paths they replace.

On a GPU the kernels run compiled; without one they run in Triton's interpreter on the CPU
(``TRITON_INTERPRET=1``), so CI checks the same arithmetic. The interpreter must be switched on
before Triton is imported, so without a GPU this module runs itself again in a child process
with the variable set. The reference is the package's own PyTorch path for the same call,
chosen with ``LMFORGE_TRITON=0``, and ``torch.optim.AdamW``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available()
# on a GPU machine `pytest -m gpu` picks these up; elsewhere they run in the interpreter child
pytestmark = [pytest.mark.gpu] if ON_GPU else []

pytest.importorskip("triton")

from lmforge.kernels import use_triton  # noqa: E402
from lmforge.model.loss import lm_head_loss, loss_from_logits  # noqa: E402
from lmforge.optim import Adam, AdamW  # noqa: E402


@pytest.fixture
def device() -> str:
    if ON_GPU:
        return "cuda"
    if not INTERPRETED:
        pytest.skip("runs in test_kernels_in_the_interpreter's child process")
    return "cpu"


@pytest.mark.skipif(ON_GPU or INTERPRETED, reason="the kernels run natively on this machine")
def test_kernels_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider"]
    cmd += ["-k", "not test_kernels_in_the_interpreter"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-2000:]


def _head_loss(monkeypatch, triton: bool, h, w, t, **kw):
    monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
    assert use_triton(h) == triton
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    r = lm_head_loss(h, w, t, **kw)
    r.loss.backward()
    return r, h.grad, w.grad


@pytest.mark.parametrize(
    ("vocab", "cap", "z_loss", "dtype"),
    [
        (100, None, 0.0, torch.float32),
        (100, 30.0, 1e-4, torch.float32),
        (5000, None, 1e-3, torch.float32),  # two vocabulary blocks
        (300, 15.0, 0.0, torch.bfloat16),
    ],
)
def test_cross_entropy_kernel_matches_torch(monkeypatch, device, vocab, cap, z_loss, dtype):
    gen = torch.Generator().manual_seed(vocab)
    h = torch.randn(21, 16, generator=gen).to(device, dtype)
    w = (3 * torch.randn(vocab, 16, generator=gen)).to(device, dtype)
    t = torch.randint(0, vocab, (21,), generator=gen).to(device)
    t[[2, 7]] = -100
    kw = dict(z_loss=z_loss, softcap=cap, chunk_size=8)
    ref, ref_gh, ref_gw = _head_loss(monkeypatch, False, h, w, t, **kw)
    out, gh, gw = _head_loss(monkeypatch, True, h, w, t, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.ce, ref.ce, rtol=1e-5, atol=1e-5)
    assert out.metrics.keys() == ref.metrics.keys()
    for k in ref.metrics:
        torch.testing.assert_close(out.metrics[k], ref.metrics[k], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, ref_gh, **tol)
    torch.testing.assert_close(gw, ref_gw, **tol)
    # the fp32 logits loss of autograd is the independent reference for the value
    logits = h.float() @ w.float().t()
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    plain = loss_from_logits(logits, t, z_loss=z_loss)
    torch.testing.assert_close(out.loss.float(), plain.loss, rtol=2e-3, atol=2e-3)


def test_cross_entropy_kernel_without_grad(monkeypatch, device):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(10, 8, generator=gen).to(device)
    w = torch.randn(50, 8, generator=gen).to(device)
    t = torch.randint(0, 50, (10,), generator=gen).to(device)
    monkeypatch.setenv("LMFORGE_TRITON", "0")
    with torch.no_grad():
        ref = lm_head_loss(h, w, t, chunk_size=4)
    monkeypatch.setenv("LMFORGE_TRITON", "1")
    with torch.no_grad():
        out = lm_head_loss(h, w, t, chunk_size=4)
    torch.testing.assert_close(out.loss, ref.loss)


def test_cross_entropy_kernel_under_torch_compile(monkeypatch, device):
    """One opaque operator inside a compiled graph: the same loss and gradients as eager."""
    monkeypatch.setenv("LMFORGE_TRITON", "1")
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(24, 16, generator=gen).to(device).requires_grad_()
    w = torch.randn(70, 16, generator=gen).to(device).requires_grad_()
    t = torch.randint(0, 70, (24,), generator=gen).to(device)

    def step(h, w):
        return lm_head_loss(h, w, t, z_loss=1e-4, chunk_size=10).loss

    eager = step(h, w)
    (gh, gw) = torch.autograd.grad(eager, (h, w))
    compiled = torch.compile(step, fullgraph=True)(h, w)
    (ch, cw) = torch.autograd.grad(compiled, (h, w))
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(ch, gh)
    torch.testing.assert_close(cw, gw)


def _run_adam(monkeypatch, device, cls, triton: bool, steps: int = 12):
    monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
    gen = torch.Generator().manual_seed(3)
    shapes = [(4100,), (33, 70), (3,), (2048,)]
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    opt = cls(params, lr=1e-2, weight_decay=0.1)
    for it in range(steps):
        for i, p in enumerate(params):
            # the third tensor skips every other step: two step counts in one group
            g = torch.randn(p.shape, generator=gen).to(device)
            p.grad = None if (i == 2 and it % 2) else g
        opt.step()
    return [p.detach().cpu() for p in params], opt


@pytest.mark.parametrize("cls", [AdamW, Adam])
def test_fused_adam_matches_foreach(monkeypatch, device, cls):
    ref, _ = _run_adam(monkeypatch, device, cls, triton=False)
    out, opt = _run_adam(monkeypatch, device, cls, triton=True)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    steps = sorted(s["step"].item() for s in opt.state.values())
    assert steps == [6.0, 12.0, 12.0, 12.0]


def test_fused_adamw_matches_torch(monkeypatch, device):
    monkeypatch.setenv("LMFORGE_TRITON", "1")
    gen = torch.Generator().manual_seed(5)
    a = [torch.randn(300, 7, generator=gen).to(device).requires_grad_() for _ in range(3)]
    b = [p.detach().clone().requires_grad_() for p in a]
    ours = AdamW(a, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    theirs = torch.optim.AdamW(b, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for _ in range(50):
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn(p.shape, generator=gen).to(device)
            q.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_adamw_updates_low_precision_params_through_masters(monkeypatch, device, dtype):
    """bfloat16/float16 parameters: the kernel reads their gradients, updates the float32
    masters like the multi-tensor path, and stores the masters rounded into the parameters;
    clipping's factor multiplies the widened gradient in both."""
    shapes = [(4100,), (33, 70), (3,)]
    runs = []
    for triton in (True, False):
        monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
        gen = torch.Generator().manual_seed(7)
        params = [
            torch.randn(s, generator=torch.Generator().manual_seed(1)).to(device, dtype)
            for s in shapes
        ]
        params = [p.requires_grad_() for p in params]
        opt = AdamW(params, lr=1e-2, weight_decay=0.1)
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(device, dtype)
            opt.step(grad_scale=torch.tensor(0.5, device=device))
        runs.append((params, opt))
    (fused, opt), (ref, ref_opt) = runs
    for p, q in zip(fused, ref, strict=True):
        master, ref_master = opt.state[p]["master"], ref_opt.state[q]["master"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, ref_master, rtol=1e-6, atol=1e-6)
        if INTERPRETED and dtype == torch.bfloat16:  # the interpreter truncates to bfloat16
            torch.testing.assert_close(p.detach(), master.to(dtype), rtol=2**-7, atol=0)
        else:
            assert torch.equal(p.detach(), master.to(dtype))
        assert opt.state[p]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_fused_adamw_with_bf16_moments_matches_foreach(monkeypatch, device, param_dtype):
    """``moment_dtype="bfloat16"``: the kernel widens the stored moments, updates them in
    float32 and rounds them on the store, as the multi-tensor path does (also over the float32
    masters of bf16 parameters)."""
    shapes = [(4100,), (33, 70), (3,)]
    runs = []
    for triton in (True, False):
        monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
        gen = torch.Generator().manual_seed(11)
        init = torch.Generator().manual_seed(2)
        params = [torch.randn(s, generator=init).to(device, param_dtype).requires_grad_()
                  for s in shapes]  # fmt: skip
        opt = AdamW(params, lr=1e-2, weight_decay=0.1, moment_dtype="bfloat16")
        for _ in range(2 if INTERPRETED else 6):  # (truncation's differences compound)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(device, param_dtype)
            opt.step()
        runs.append((params, opt))
    (fused, opt), (ref, ref_opt) = runs
    # the interpreter truncates to bfloat16 where the GPU and PyTorch round: an ulp or two
    for p, q in zip(fused, ref, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            got, want = opt.state[p][key], ref_opt.state[q][key]
            assert got.dtype == torch.bfloat16
            # (on a GPU too an FMA may tip a rounding: one ulp)
            scale = want.float().abs().max().item()
            atol = 2**-6 * scale if INTERPRETED else 2**-12 * scale
            torch.testing.assert_close(got, want, rtol=2**-6 if INTERPRETED else 2**-7, atol=atol)
        weight = "master" if param_dtype == torch.bfloat16 else None
        a = opt.state[p][weight] if weight else p.detach()
        b = ref_opt.state[q][weight] if weight else q.detach()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4 if INTERPRETED else 1e-6)


def test_fused_flag_is_validated():
    with pytest.raises(ValueError, match="fused"):
        AdamW([torch.zeros(2, requires_grad=True)], lr=1e-3, fused="yes")  # type: ignore[arg-type]


def _moe_rows(monkeypatch, device, triton: bool, dtype, rounded=None, n=13, k=3, d=40):
    """The MoE gather and combine (forward and gradients) with or without the kernels; inputs
    drawn in float32, rounded to ``rounded`` (default ``dtype``), computed in ``dtype``."""
    from lmforge.model.moe.permute import _kernel_ok, combine_rows, gather_rows, sort_maps

    monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
    rounded = rounded or dtype
    gen = torch.Generator().manual_seed(d)

    def draw(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(rounded).to(device, dtype)

    experts = torch.stack([torch.randperm(6, generator=gen)[:k] for _ in range(n)])
    order = torch.argsort(experts.t().reshape(-1), stable=True).to(device)
    token_of_row, rows_of_token = sort_maps(order, n, k)
    x = draw(n, d).requires_grad_()
    gates = torch.rand(n, k, generator=gen).to(device)
    gates = gates.double().requires_grad_() if dtype == torch.float64 else gates.requires_grad_()
    w = draw(d, d, scale=d**-0.5)
    probe = draw(n, d)
    assert _kernel_ok(x, gates) == triton
    xs = gather_rows(x, token_of_row, rows_of_token)
    hs = (xs @ w).to(rounded).to(dtype)  # stands in for the experts
    y = combine_rows(hs, gates, token_of_row, rows_of_token)
    (y * probe).sum().backward()
    return y, x.grad, gates.grad


@pytest.mark.parametrize(
    ("dtype", "d"), [(torch.float32, 40), (torch.bfloat16, 40), (torch.float32, 2500)]
)
def test_moe_row_kernels_match_torch(monkeypatch, device, dtype, d):
    """Against the PyTorch path in float64 on the same (rounded) inputs: float32 to 1e-5; bf16
    to its own rounding of the outputs (2⁻⁸ relative) plus its inputs' rounding in between."""
    ref = _moe_rows(monkeypatch, "cpu", False, torch.float64, rounded=dtype, d=d)
    out = _moe_rows(monkeypatch, device, True, dtype, d=d)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=3e-2)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a.cpu().double(), b, **tol)


def _rope(monkeypatch, device, triton: bool, x, start: int, seq_dim: int, compiled=False):
    """RoPE of ``x`` (and its gradient against a fixed probe) with or without the kernel."""
    from lmforge.model.rope import RotaryEmbedding

    monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
    head_dim = x.shape[-1]
    rope = RotaryEmbedding(head_dim, 40, theta=500.0, device=device)
    x = x.detach().clone().to(device).requires_grad_()
    assert use_triton(x) == triton
    backend = "inductor" if ON_GPU else "aot_eager"  # the interpreter cannot run Inductor's code
    fn = torch.compile(rope, fullgraph=True, backend=backend) if compiled else rope
    y = fn(x, start, seq_dim=seq_dim)
    probe = torch.linspace(-1, 1, y.numel(), device=device).view(y.shape).to(y.dtype)
    (y.float() * probe.float()).sum().backward()
    return y, x.grad


@pytest.mark.parametrize(
    ("shape", "seq_dim", "start"),
    [((2, 7, 3, 64), -3, 0), ((2, 3, 7, 32), -2, 5), ((1, 9, 5, 96), -3, 31), ((3, 4, 2), -2, 1)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_kernel_matches_torch(monkeypatch, device, shape, seq_dim, start, dtype):
    """Same float32 arithmetic as ``apply_rotary``: float32 to rounding, bf16 to one rounding
    of the output; the gradient is the rotation by the opposite angle."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen).to(dtype)
    ref = _rope(monkeypatch, "cpu", False, x, start, seq_dim)
    out = _rope(monkeypatch, device, True, x, start, seq_dim)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=8e-3, atol=8e-3)
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a.cpu(), b, **tol)


def test_rope_kernel_under_torch_compile(monkeypatch, device):
    monkeypatch.setenv("LMFORGE_TRITON", "1")
    x = torch.randn(2, 6, 4, 16, generator=torch.Generator().manual_seed(1))
    eager = _rope(monkeypatch, device, True, x, 3, -3)
    compiled = _rope(monkeypatch, device, True, x, 3, -3, compiled=True)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fused_adamw_applies_grad_scale(monkeypatch, device):
    """The kernel's ``grad_scale`` (clipping's factor, multiplied as the gradient is loaded)
    against clipping first and the multi-tensor path; the gradients are left as they were."""
    from lmforge.optim import clip_coefficient, clip_grad_norm_

    gen = torch.Generator().manual_seed(9)
    a = [torch.randn(300, 7, generator=gen).to(device).requires_grad_() for _ in range(3)]
    b = [p.detach().clone().requires_grad_() for p in a]
    monkeypatch.setenv("LMFORGE_TRITON", "1")
    ours = AdamW(a, lr=3e-3, weight_decay=0.1)
    theirs = AdamW(b, lr=3e-3, weight_decay=0.1, fused=False)
    for _ in range(5):
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn(p.shape, generator=gen).to(device) * 10
            q.grad = p.grad.clone()
        grads = [p.grad.clone() for p in a]
        _, coef = clip_coefficient(a, 1.0)
        assert coef < 1.0
        ours.step(grad_scale=coef)
        clip_grad_norm_(b, 1.0)
        theirs.step()
        for g, p in zip(grads, a, strict=True):
            assert torch.equal(g, p.grad)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("n", "e", "k"), [(70, 64, 8), (33, 8, 2), (5, 3, 3), (129, 160, 6)])
@pytest.mark.parametrize("bias", [False, True])
def test_route_topk_matches_torch(device, n, e, k, bias):
    """Each row's k best experts, best first, as ``torch.topk``; ties to the lower index."""
    from lmforge.kernels.route_topk import route_topk

    gen = torch.Generator().manual_seed(n * e + k)
    scores = torch.rand(n, e, generator=gen)
    scores[0] = 0.5  # a row of ties
    scores[1, : min(e, 4)] = float("nan")  # NaN ranks first
    b = torch.randn(e, generator=gen) * 0.1 if bias else None
    got = route_topk(scores.to(device), None if b is None else b.to(device), k).cpu()
    summed = scores if b is None else scores + b
    want = summed.topk(k, dim=-1).indices
    torch.testing.assert_close(got[2:], want[2:], rtol=0, atol=0)
    assert got[0].tolist() == list(range(k)) if b is None else got[0].tolist() == want[0].tolist()
    assert sorted(got[1, : min(e, 4, k)].tolist()) == list(range(min(e, 4, k)))


def test_route_topk_in_the_routers(monkeypatch, device):
    """The sigmoid router (with its bias) picks the same experts with and without the kernel,
    also compiled."""
    from lmforge.model.moe import MoEConfig
    from lmforge.model.moe.routers import SigmoidRouter

    moe = MoEConfig(n_routed_experts=16, top_k=4, router="sigmoid")
    router = SigmoidRouter(24, moe, init_std=0.5).to(device)
    assert router.expert_bias is not None
    router.expert_bias.copy_(torch.linspace(-0.2, 0.2, 16))
    x = torch.randn(50, 24, generator=torch.Generator().manual_seed(3)).to(device)
    backend = "inductor" if ON_GPU else "aot_eager"  # the interpreter cannot run Inductor's code
    picks = []
    for triton, compiled in ((True, False), (True, True), (False, False)):
        monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
        fn = torch.compile(router, fullgraph=True, backend=backend) if compiled else router
        picks.append(fn(x).experts.cpu())
    for p in picks[:2]:
        torch.testing.assert_close(p, picks[2], rtol=0, atol=0)


@pytest.mark.parametrize(("n", "e", "k"), [(70, 64, 8), (33, 8, 2), (5, 3, 2), (300, 48, 6)])
def test_balance_histograms_match_the_reference(device, n, e, k):
    """In-batch balancing's per-expert histograms of margins and gaps, bin for bin as the
    PyTorch reference: with offsets; then without, on a row of ties (to the lower index), a
    gap exactly on a bin's edge, and NaN scores."""
    from lmforge.kernels.balance_histograms import balance_histograms, thresholds
    from lmforge.model.moe.balance import balance_histograms_reference

    gen = torch.Generator().manual_seed(n + e + k)
    scores = torch.rand(n, e, generator=gen)
    edges = thresholds("cpu")
    offsets = torch.randn(e, generator=gen) * 0.05
    for off in (offsets, torch.zeros(e)):
        got = balance_histograms(scores.to(device), off.to(device), edges.to(device), k)
        want = balance_histograms_reference(scores, off, edges, k)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.cpu(), w, rtol=0, atol=0)
        assert int(want[0].sum()) == n * k and int(want[1].sum()) == n * (e - k)
        if n < 3:
            continue
        scores[0] = 0.5  # a row of ties: the first k experts are picked
        scores[1] = 0.1
        scores[1, :k] = 0.5
        scores[1, k] = 0.5 - 2.0**-7  # expert k's gap is exactly edge 39 (2^(-20 + 39/3))
        scores[2, : min(e, 2)] = float("nan")  # NaN ranks first
    want = balance_histograms_reference(scores, torch.zeros(e), edges, k)
    if n >= 3:  # the special rows counted where the kernel must count them too
        assert float(edges[39]) == 2.0**-7
        assert int(want[1][k, 40]) >= 1  # on the edge: bucketize(right=True) puts it above


def test_balance_histograms_refuse_more_experts_than_the_kernel_takes(device):
    from lmforge.kernels.balance_histograms import balance_histograms, thresholds

    with pytest.raises(ValueError, match="at most 64 experts"):
        balance_histograms(torch.rand(4, 65, device=device), torch.zeros(65, device=device),
                           thresholds(device), 2)  # fmt: skip


def test_batch_balance_offsets_with_and_without_the_kernel(monkeypatch, device):
    from lmforge.model.moe.balance import batch_balance_offsets

    gen = torch.Generator().manual_seed(4)
    scores = torch.sigmoid(torch.randn(512, 32, generator=gen) + torch.randn(32, generator=gen))
    results = []
    for triton in (True, False):
        monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
        offsets, counts = batch_balance_offsets(scores.to(device), 4, 1.2)
        results.append((offsets.cpu(), counts.cpu()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


def test_route_topk_rejects_k_above_experts(device):
    from lmforge.kernels.route_topk import route_topk

    with pytest.raises(ValueError, match="1 <= k <= 4"):
        route_topk(torch.rand(3, 4, device=device), None, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_gather_kernel_is_a_copy(monkeypatch, device, dtype):
    """The gather into expert order through the row kernel is ``x[token_of_row]``, bit for bit
    (negative zeros included)."""
    from lmforge.model.moe.permute import gather_rows, sort_maps

    monkeypatch.setenv("LMFORGE_TRITON", "1")
    gen = torch.Generator().manual_seed(5)
    n, k, d = 17, 2, 1100  # two column blocks
    x = torch.randn(n, d, generator=gen).to(device, dtype)
    x[3, :7] = -0.0
    experts = torch.stack([torch.randperm(5, generator=gen)[:k] for _ in range(n)])
    order = torch.argsort(experts.t().reshape(-1), stable=True).to(device)
    token_of_row, rows_of_token = sort_maps(order, n, k)
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    got = gather_rows(x, token_of_row, rows_of_token).view(bits)
    torch.testing.assert_close(got, x[token_of_row].view(bits), rtol=0, atol=0)


def test_custom_ops_pass_opcheck(device):
    """The fake (shape) functions, autograd registrations and schemas of the MoE ops agree with
    the ops (``torch.library.opcheck``), also for non-contiguous inputs."""
    from lmforge.kernels import moe_counts, moe_rows
    from lmforge.kernels.route_topk import route_topk
    from lmforge.kernels.swiglu import swiglu, swiglu_backward

    gen = torch.Generator().manual_seed(7)
    scores = torch.rand(9, 12, generator=gen).to(device)
    h13 = torch.randn(12, 10, generator=gen).to(device).t()  # (10, 12), not contiguous
    grad = torch.randn(6, 10, generator=gen).to(device).t()
    x = torch.randn(7, 5, generator=gen).to(device)
    idx = torch.randint(0, 7, (4, 1), generator=gen).to(device)
    cases = [
        (route_topk, (scores, None, 3)),
        (route_topk, (scores, torch.randn(12, generator=gen).to(device), 4)),
        (swiglu, (h13.clone().requires_grad_(),)),
        (swiglu, (h13.contiguous().requires_grad_(),)),
        (swiglu_backward, (h13, grad)),
        (moe_rows.gather_sum, (x, idx, None)),
        (moe_counts.expert_counts, (idx, 7)),
        (moe_counts.route_sort, (idx.view(-1), 7, 2)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_custom_ops_reject_other_dtypes(device):
    from lmforge.kernels.route_topk import route_topk
    from lmforge.kernels.swiglu import swiglu

    with pytest.raises(ValueError, match="float32 scores"):
        route_topk(torch.rand(3, 4, device=device, dtype=torch.float64), None, 2)
    with pytest.raises(ValueError, match="computes in float32"):
        swiglu(torch.rand(3, 4, device=device, dtype=torch.float64))
    with pytest.raises(ValueError, match="even width"):
        swiglu(torch.rand(3, 5, device=device))


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((37, 2 * 48), torch.float32),
        ((3, 5, 2 * 1100), torch.bfloat16),
        ((6, 2 * 8), torch.bfloat16),
    ],
)
def test_swiglu_kernel_matches_torch(monkeypatch, device, shape, dtype):
    """The experts' SwiGLU and its gradient against float64 on the same rounded inputs: float32
    to 1e-5, bf16 to its one rounding of each output."""
    from lmforge.model.moe.dispatch import _swiglu

    gen = torch.Generator().manual_seed(shape[-1])
    h13 = (2 * torch.randn(*shape, generator=gen)).to(dtype)
    probe = torch.randn(*shape[:-1], shape[-1] // 2, generator=gen).to(dtype)

    def run(triton: bool, x: torch.Tensor, p: torch.Tensor):
        monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
        x = x.detach().clone().requires_grad_()
        y = _swiglu(x)
        y.backward(p)
        return y, x.grad

    ref_y, ref_g = run(False, h13.double(), probe.double())
    y, g = run(True, h13.to(device), probe.to(device))
    assert y.dtype == g.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-2)
    torch.testing.assert_close(y.cpu().double(), ref_y, **tol)
    torch.testing.assert_close(g.cpu().double(), ref_g, **tol)


@pytest.mark.parametrize("router", ["sigmoid", "token_choice"])
def test_moe_model_with_and_without_kernels(monkeypatch, device, router):
    """A small MoE model's loss and gradients are the same with every MoE kernel on (router
    top-k, gather, SwiGLU, combine) as on the PyTorch path: float32, to rounding."""
    from lmforge.model.config import ModelConfig
    from lmforge.model.moe import MoEConfig
    from lmforge.model.transformer import Transformer

    moe = MoEConfig(n_routed_experts=8, top_k=3, n_shared_experts=1, expert_d_ff=32, router=router)
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=2, moe=moe)
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    results = []
    for triton in (True, False):
        monkeypatch.setenv("LMFORGE_TRITON", "1" if triton else "0")
        torch.manual_seed(0)
        model = Transformer(cfg).to(device).train()
        out = model(idx, torch.roll(idx, -1, 1), return_logits=False)
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads))
    (loss, grads), (ref_loss, ref_grads) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(("n", "e"), [(1, 1), (5000, 8), (9000, 64), (4096, 3), (100, 160)])
def test_expert_counts_kernel_matches_torch(monkeypatch, device, n, e):
    """Per-block histograms summed equal the scatter-add reference, for any shape of ids."""
    from lmforge.model.moe.balance import expert_counts

    ids = torch.randint(0, e, (n,), generator=torch.Generator().manual_seed(n + e))
    ids[: min(n, 7)] = e - 1  # the last expert, next to the spare bin
    counts = []
    for triton in ("1", "0"):
        monkeypatch.setenv("LMFORGE_TRITON", triton)
        counts.append(expert_counts(ids.to(device).view(-1, 1), e).cpu())
    assert counts[0].dtype == torch.int64 and counts[0].sum() == n
    torch.testing.assert_close(counts[0], counts[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("n", "k", "e"), [(700, 3, 8), (1500, 2, 64), (5, 1, 1), (2100, 4, 100), (1100, 3, 1024)]
)
def test_route_sort_matches_argsort(device, n, k, e):
    """The counting sort's maps equal those of the stable ``argsort`` (``sort_maps``)."""
    from lmforge.kernels.moe_counts import route_sort
    from lmforge.model.moe.balance import expert_counts
    from lmforge.model.moe.permute import sort_maps

    gen = torch.Generator().manual_seed(n * k + e)
    choices = torch.stack([torch.randperm(max(e, k), generator=gen)[:k] % e for _ in range(n)])
    experts = choices.t().reshape(-1)
    token_of_row, rows, counts = route_sort(experts.to(device), e, n)
    ref_tokens, ref_rows = sort_maps(torch.argsort(experts, stable=True), n, k)
    torch.testing.assert_close(token_of_row.cpu(), ref_tokens, rtol=0, atol=0)
    torch.testing.assert_close(rows.cpu().view(k, n).t(), ref_rows, rtol=0, atol=0)
    torch.testing.assert_close(counts.cpu(), expert_counts(experts, e), rtol=0, atol=0)


# the interpreter's dot mishandles bf16 (its results are garbage there), so on the CPU the
# attention kernels are checked in fp16; on a GPU in both
ATTN_DTYPES = [torch.bfloat16, torch.float16] if ON_GPU else [torch.float16]


def _attention(device, dtype, b, h, hkv, t, d, compiled=False):
    """Output and input gradients of ``causal_attention`` on the projections' ``(batch, seq,
    heads, head_dim)`` layout seen through a transpose (as the model passes them), and the
    float64 SDPA reference on the same (rounded) inputs."""
    import torch.nn.functional as F

    from lmforge.kernels.attention import causal_attention

    gen = torch.Generator().manual_seed(t * 7 + d)
    q, k, v = (torch.randn(b, t, n, d, generator=gen).to(dtype) for n in (h, hkv, hkv))
    probe = torch.randn(b, h, t, d, generator=gen).to(dtype)
    ours = [x.to(device).transpose(1, 2).requires_grad_() for x in (q, k, v)]
    backend = "inductor" if ON_GPU else "aot_eager"  # the interpreter cannot run Inductor's code
    fn = (
        torch.compile(causal_attention, fullgraph=True, backend=backend)
        if compiled
        else causal_attention
    )
    out = fn(*ours)
    out.backward(probe.to(device))
    ref = [x.double().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    expected = F.scaled_dot_product_attention(*ref, is_causal=True, enable_gqa=h != hkv)
    expected.backward(probe.double())
    got = [out, *(x.grad for x in ours)]
    want = [expected, *(x.grad for x in ref)]
    return [g.detach().cpu().double() for g in got], [w.detach() for w in want]


@pytest.mark.parametrize(
    "shape",
    [
        (2, 4, 4, 67, 32),
        (1, 4, 2, 130, 64),
        (2, 2, 1, 1, 16),
        (1, 2, 2, 64, 128),
        (1, 2, 2, 256, 32),
    ],
)
@pytest.mark.parametrize("dtype", ATTN_DTYPES)
def test_causal_attention_kernel_matches_float64_sdpa(device, shape, dtype):
    """Forward and all three input gradients against float64 SDPA: lengths that are not a
    multiple of the blocks (67, 130) and a single position, grouped-query (2 and 4 query heads
    a key/value head), every head dimension the kernels take."""
    got, want = _attention(device, dtype, *shape)
    atol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    for name, g, w in zip(["out", "dq", "dk", "dv"], got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def test_causal_attention_kernel_under_torch_compile(device):
    """The custom operators trace into a full graph and give the eager numbers exactly."""
    eager, _ = _attention(device, ATTN_DTYPES[0], 2, 4, 2, 70, 32)
    compiled, _ = _attention(device, ATTN_DTYPES[0], 2, 4, 2, 70, 32, compiled=True)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_attend_takes_the_kernel_for_short_causal_16_bit(monkeypatch, device):
    """``attend`` sends plain causal 16-bit attention up to ``MAX_SEQ`` positions to the kernel,
    and everything else (a mask, float32, a longer sequence, Triton off) to SDPA."""
    import lmforge.model.attention as attention
    from lmforge.kernels.attention import MAX_SEQ, causal_attention

    calls = []

    def counted(q, k, v):
        calls.append(q.shape)
        return causal_attention(q, k, v)

    monkeypatch.setattr(attention, "causal_attention", counted)
    dt = ATTN_DTYPES[0]
    x = torch.randn(1, 2, 40, 32).to(device, dt)
    attention.attend(x, x, x, is_causal=True)
    assert calls == [x.shape]
    attention.attend(x, x, x, mask=torch.ones(40, 40, dtype=torch.bool, device=device))
    attention.attend(x.float(), x.float(), x.float(), is_causal=True)
    long = torch.zeros(1, 1, MAX_SEQ + 1, 16).to(device, dt)
    attention.attend(long, long, long, is_causal=True)
    monkeypatch.setenv("LMFORGE_TRITON", "0")
    attention.attend(x, x, x, is_causal=True)
    assert calls == [x.shape]


def test_causal_attention_kernel_rejects_bad_shapes():
    from lmforge.kernels.attention import causal_attention

    q = torch.zeros(1, 4, 8, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match="head_dim in"):
        causal_attention(q[..., :24], q[..., :24], q[..., :24])
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        causal_attention(q, q[:, :3], q[:, :3])
    with pytest.raises(ValueError, match="same batch, length"):
        causal_attention(q, q[:, :, :5], q[:, :, :5])


def test_attend_sends_what_the_kernel_cannot_take_to_sdpa(monkeypatch, device):
    """Values narrower than keys (MLA's), a head dimension that is not contiguous, and
    different batches go to SDPA, which takes them, not to the kernel, which would refuse."""
    import torch.nn.functional as F

    import lmforge.model.attention as attention

    monkeypatch.setattr(attention, "causal_attention", None)  # must not be called
    dt = ATTN_DTYPES[0]
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(1, 2, 20, 64, generator=gen).to(device, dt) for _ in range(2))
    v = torch.randn(1, 2, 20, 32, generator=gen).to(device, dt)
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    got = attention.attend(q, k, v, is_causal=True)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=4e-3)
    strided = torch.randn(1, 2, 20, 64, 2, generator=gen).to(device, dt)[..., 0]
    attention.attend(strided, strided, strided, is_causal=True)
    attention.attend(q.expand(2, -1, -1, -1), k, k, is_causal=True)


def test_causal_attention_log_sum_exp_is_not_differentiable(device):
    """The forward's second output is the backward's statistic: no gradient flows through it,
    and an empty sequence gives empty results."""
    q = torch.randn(1, 2, 9, 16).to(device, ATTN_DTYPES[0]).requires_grad_()
    out, lse = torch.ops.lmforge.causal_attention(q, q, q, 0.25)
    assert out.requires_grad and not lse.requires_grad
    empty = torch.zeros(1, 2, 0, 16, device=device, dtype=ATTN_DTYPES[0], requires_grad=True)
    from lmforge.kernels.attention import causal_attention

    y = causal_attention(empty, empty, empty)
    y.sum().backward()
    assert y.shape == empty.shape and empty.grad is not None and empty.grad.shape == empty.shape
