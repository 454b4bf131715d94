"""coverage: one OpInfo's samples through TorchMLIRTensor, classified, with differences from native caught."""
import torch

from torch_mlir_eager import coverage


def _op(name):
    return next(op for op in coverage.ops_for(torch.float32) if coverage.name_of(op) == name)


def test_full_op_counts_its_calls():
    r = coverage.run_op(_op("add"), torch.float32, samples=2)
    assert r.samples == 2 and r.mlir >= 2 and r.fallback == 0 and r.mismatch is None
    assert r.status == "full"


def test_a_result_that_differs_from_native_is_a_mismatch(monkeypatch):
    real = coverage._run

    def off_by_one(fn, sample, wrap):
        out = real(fn, sample, wrap)
        return out + 1 if wrap else out
    monkeypatch.setattr(coverage, "_run", off_by_one)
    r = coverage.run_op(_op("neg"), torch.float32, samples=1)
    assert r.status == "MISMATCH" and r.mismatch.startswith("sample 0")


def test_table_and_summary_name_every_op():
    rs = [coverage.run_op(_op(n), torch.float32, samples=1) for n in ("add", "nonzero")]
    md = coverage.markdown(rs, torch.float32)
    assert "| add | full |" in md and "| nonzero |" in md
    assert "mismatches: 0" in coverage.summary(rs)


def test_a_wrapped_call_that_raises_where_native_returns_is_a_mismatch(monkeypatch):
    real = coverage._run

    def raises_when_wrapped(fn, sample, wrap):
        if wrap:
            raise RuntimeError("boom")
        return real(fn, sample, wrap)
    monkeypatch.setattr(coverage, "_run", raises_when_wrapped)
    r = coverage.run_op(_op("neg"), torch.float32, samples=1)
    assert r.status == "MISMATCH" and "wrapped raised RuntimeError" in r.mismatch
