import torch

from dinotracker.evaluation.baselines import flow_chaining_baseline, still_baseline


def test_still():
    q = torch.tensor([[1.0, 5.0, 6.0], [0.0, 2.0, 3.0]])
    tr, vis = still_baseline(q, 4)
    assert tr.shape == (2, 4, 2) and vis.all()
    assert torch.equal(tr[0, 3], torch.tensor([5.0, 6.0]))


def test_flow_chaining_translation_forward_and_backward():
    t, h, w = 6, 20, 30
    fwd = torch.zeros(t - 1, 2, h, w)
    fwd[:, 0] = 1.5  # x moves +1.5 px per frame
    fwd[:, 1] = -0.5
    bwd = -fwd
    q = torch.tensor([[2.0, 10.25, 12.0], [0.0, 3.0, 4.0]])
    tr, vis = flow_chaining_baseline(q, fwd, bwd)
    for i in range(2):
        tq = int(q[i, 0])
        for k in range(t):
            expect = q[i, 1:] + torch.tensor([1.5, -0.5]) * (k - tq)
            assert torch.allclose(tr[i, k], expect, atol=1e-4), (i, k)
    assert vis.all()


def test_flow_chaining_marks_leaving_and_inconsistent():
    t, h, w = 5, 10, 10
    fwd = torch.zeros(t - 1, 2, h, w)
    fwd[:, 0] = 3.0
    bwd = -fwd
    bwd[2] = 0.0  # inconsistent at step 2->3: occluded from frame 3 on
    q = torch.tensor([[0.0, 1.0, 5.0]])
    tr, vis = flow_chaining_baseline(q, fwd, bwd)
    assert vis[0].tolist() == [True, True, True, False, False]
    q = torch.tensor([[0.0, 5.0, 5.0]])
    fwd2, bwd2 = fwd.clone(), -fwd
    tr, vis = flow_chaining_baseline(q, fwd2, bwd2)
    assert vis[0].tolist() == [True, True, False, False, False]  # 5 -> 8 -> 11 (outside)
