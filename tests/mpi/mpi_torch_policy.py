"""The DDP hook's per-layer policy and its exact path through the process group, on every rank.

- exact="process_group" gives plain DDP's parameters bitwise (blocking and on the progress thread);
- with a policy every parameter's slice goes by its rule (per-rule byte counters), the result equals a
  per-rule reference (each rule's slices reduced alone by a state of that one compression), bitwise;
- a rank whose policy or parameter names differ makes every rank raise;
- the policy's state round-trips.

Run by tests/test_torch_hook.py under mpiexec at 1 to 4 ranks.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed (make install-torch)")

from mpi4py import MPI  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import scaleml.torch as smt  # noqa: E402

pytestmark = pytest.mark.mpi

comm = MPI.COMM_WORLD
P, RANK = comm.Get_size(), comm.Get_rank()
POLICY = "*.bias=none,0.*=qsgd4,*=topk0.05"
MODES = [False, True]


@pytest.fixture(scope="module", autouse=True)
def process_group():
    torch.set_num_threads(1)
    smt.init_process_group_from_mpi()
    yield


def make_model() -> torch.nn.Module:
    torch.manual_seed(11)
    # 0.weight 64x48 (qsgd4), 0.bias 48 (none), 2.weight 48x40 = 1920 (topk0.05), 2.bias 40 (none)
    return torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.ReLU(), torch.nn.Linear(64, 40))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + RANK)
    return torch.randn(16, 48, generator=g), torch.randint(0, 40, (16,), generator=g)


def train(state: smt.ScaleMLHookState | None, steps: int = 4, model: torch.nn.Module | None = None,
          hook=None, **ddp_kw) -> torch.nn.Module:
    model = make_model() if model is None else model
    ddp = DistributedDataParallel(model, **ddp_kw)
    if state is not None:
        ddp.register_comm_hook(state, hook or smt.allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for s in range(steps):
        x, y = batch(s)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    return model


def flat(model: torch.nn.Module) -> bytes:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().tobytes()


def identical_everywhere(b: bytes) -> bool:
    return all(x == b for x in comm.allgather(b))


@pytest.mark.parametrize("nonblocking", MODES)
@pytest.mark.parametrize("bucket_cap_mb", [None, 0.005])  # one bucket; several
def test_exact_through_the_process_group_is_plain_ddp_bitwise(nonblocking, bucket_cap_mb):
    plain = train(None, bucket_cap_mb=bucket_cap_mb)
    state = smt.ScaleMLHookState(comm, "none", exact="process_group", nonblocking=nonblocking)
    assert state.exact_path == "process_group"
    hooked = train(state, bucket_cap_mb=bucket_cap_mb)
    assert flat(hooked) == flat(plain)
    assert state.stats["calls"] >= 4
    # the MPI path is the same to float rounding only (another order of the sums): it is not what ran above
    mpi = smt.ScaleMLHookState(comm, "none", exact="mpi", nonblocking=nonblocking)
    np.testing.assert_allclose(np.frombuffer(flat(train(mpi, bucket_cap_mb=bucket_cap_mb)), np.float32),
                               np.frombuffer(flat(plain), np.float32), rtol=1e-5, atol=1e-6)


def test_exact_argument_is_checked_and_auto_is_the_process_group_when_there_is_one():
    assert torch.distributed.is_initialized()  # this module's fixture: DDP's case
    assert smt.ScaleMLHookState(comm).exact_path == "process_group"
    assert smt.ScaleMLHookState(comm, exact="mpi").exact_path == "mpi"
    with pytest.raises(ValueError, match="exact must be one of"):
        smt.ScaleMLHookState(comm, exact="gloo")


def recorder(calls: list):
    """The hook, wrapped: keeps each bucket's index, input, parameters (ids) and output in ``calls``."""
    def hook(state, bucket):
        before = bucket.buffer().detach().clone().numpy()
        ids = [id(p) for p in bucket.parameters()]
        index = int(bucket.index())

        def keep(fut):
            out = fut.value()
            calls.append((index, before, ids, out.detach().clone()))
            return out
        return smt.allreduce_hook(state, bucket).then(keep)
    return hook


@pytest.mark.parametrize("nonblocking", MODES)
@pytest.mark.parametrize("bucket_cap_mb", [None, 0.005])
def test_policy_compresses_each_slice_by_its_rule_as_the_per_rule_reference(nonblocking, bucket_cap_mb):
    model = make_model()
    state = smt.ScaleMLHookState(comm, policy=POLICY, model=model, min_compress_numel=1024, seed=4,
                                 nonblocking=nonblocking, exact="mpi")  # the reference's exact slices: MPI
    assert state.assignment == {"0.weight": ("0.*=qsgd4", "qsgd4"), "0.bias": ("*.bias=none", "exact"),
                                "2.weight": ("*=topk0.05", "topk0.05"), "2.bias": ("*.bias=none", "exact")}
    calls: list = []
    train(state, model=model, hook=recorder(calls), bucket_cap_mb=bucket_cap_mb)
    per_rule = state.stats["per_rule"]
    assert sorted(per_rule) == sorted(["*.bias=none", "0.*=qsgd4", "*=topk0.05"]), per_rule
    if P > 1:
        assert all(v > 0 for v in per_rule.values()), per_rule
        assert sum(per_rule.values()) == state.stats["bytes_sent"]
    # the reference: each rule's slices of each bucket, fused in bucket order, reduced by a state of that one
    # compression (same seed), the exact ones by MPI_Allreduce
    name_of = {id(p): n for n, p in model.named_parameters()}
    refs = {"0.*=qsgd4": smt.ScaleMLHookState(comm, "qsgd4", min_compress_numel=0, seed=4, nonblocking=False),
            "*=topk0.05": smt.ScaleMLHookState(comm, "topk0.05", min_compress_numel=0, seed=4, nonblocking=False)}
    numel = {n: p.numel() for n, p in model.named_parameters()}
    assert len(calls) >= 4
    for index, before, ids, out in calls:
        names = [name_of[i] for i in ids]
        offsets = np.cumsum([0] + [numel[n] for n in names])
        want = np.empty_like(before)
        for label in ("*.bias=none", "0.*=qsgd4", "*=topk0.05"):
            mine = [k for k, n in enumerate(names) if state.assignment[n][0] == label]
            if not mine:
                continue
            x = np.concatenate([before[offsets[k]:offsets[k + 1]] for k in mine])
            if label in refs:
                refs[label].reduce_(index, x)
            else:
                comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
                x /= P
            pos = 0
            for k in mine:
                want[offsets[k]:offsets[k + 1]] = x[pos:pos + numel[names[k]]]
                pos += numel[names[k]]
        assert out.numpy().tobytes() == want.tobytes(), (index, names)
    assert identical_everywhere(flat(model))


def test_policy_state_round_trips_and_resumes_bitwise():
    def run(steps, resume=None):
        model = make_model()
        # exact slices by MPI: gloo's sums depend on the bucket's composition, which DDP rebuilds after the first
        # step of a job, so a resumed job's first step would differ in the last bit (plain DDP's does too)
        state = smt.ScaleMLHookState(comm, policy=POLICY, model=model, min_compress_numel=1024, seed=4, exact="mpi")
        ddp = DistributedDataParallel(model)
        ddp.register_comm_hook(state, smt.allreduce_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        if resume is not None:
            ckpt = torch.load(io.BytesIO(resume), weights_only=True)
            model.load_state_dict(ckpt["model"])
            state.load_state_dict(ckpt["hook"])
        for s in steps:
            x, y = batch(s)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "hook": state.state_dict()}, buf)
        return model, state, buf.getvalue()

    _, state, ckpt = run(range(3))
    saved = state.state_dict()
    assert saved["compression"] == f"policy:{POLICY}"
    assert any(k.startswith("rule2/ef/residual/") for k in saved), sorted(saved)  # topk's residuals
    whole, _, _ = run(range(6))
    resumed, _, _ = run(range(3, 6), resume=ckpt)
    assert flat(resumed) == flat(whole)
    with pytest.raises(ValueError, match="not 'policy:"):
        smt.ScaleMLHookState(comm, policy="*=qsgd4", model=make_model()).load_state_dict(saved)
    with pytest.raises(ValueError, match="compression 'policy:"):
        smt.ScaleMLHookState(comm, "qsgd4").load_state_dict(saved)


def test_mismatched_policies_or_names_raise_on_every_rank():
    model = make_model()
    if P > 1:
        policy = "*=qsgd4" if RANK != P - 1 else "*=qsgd8"
        with pytest.raises(ValueError, match="ranks use different compression policies or parameter names"):
            smt.ScaleMLHookState(comm, policy=policy, model=model)
        named = list(model.named_parameters())
        if RANK == 0:
            named = named[::-1]  # the same policy, the names in another order
        with pytest.raises(ValueError, match="ranks use different compression policies or parameter names"):
            smt.ScaleMLHookState(comm, policy=POLICY, named_parameters=named)
    smt.ScaleMLHookState(comm, policy=POLICY, model=model)  # and agreeing ranks go on


def test_policy_arguments_are_checked():
    model = make_model()
    with pytest.raises(ValueError, match="compression .* or a policy, not both"):
        smt.ScaleMLHookState(comm, "qsgd4", policy=POLICY, model=model)
    with pytest.raises(ValueError, match="needs the parameters' names"):
        smt.ScaleMLHookState(comm, policy=POLICY)
    with pytest.raises(ValueError, match="give policy= too"):
        smt.ScaleMLHookState(comm, model=model)
    with pytest.raises(ValueError, match="pattern '\\*': unknown compression 'adaptive'"):
        smt.ScaleMLHookState(comm, policy="*=adaptive", model=model)
    with pytest.warns(UserWarning, match="pattern 'nothing.\\*' \\(fp16\\) matches no parameter"):
        smt.ScaleMLHookState(comm, policy="nothing.*=fp16,*=qsgd4", model=model)
    ddp = DistributedDataParallel(make_model())
    state = smt.ScaleMLHookState(comm, policy=POLICY, model=ddp)  # DDP unwrapped: names without "module."
    assert sorted(state.assignment) == ["0.bias", "0.weight", "2.bias", "2.weight"]
