"""The default turbofan model is an ensemble of LSTMs in one module: members train on their own losses and
predictions are their mean."""

import copy

import torch

from training.models import build_model
from training.tasks.turbofan import INPUT_NOISE, RUL_CAP, rul_loss


def ensemble(members: int = 3):
    torch.manual_seed(0)
    return build_model({"arch": "lstm", "n_features": 5, "window": 8, "dropout": 0.0, "members": members})


def test_training_returns_every_member_and_evaluation_their_mean():
    model, x = ensemble(), torch.randn(4, 8, 5)
    per_member = model.train()(x)
    assert per_member.shape == (4, 3)
    assert not torch.allclose(per_member[:, 0], per_member[:, 1])  # independently initialised
    torch.testing.assert_close(model.eval()(x), per_member.mean(dim=-1))


def test_each_member_learns_from_its_own_error_only():
    model, x = ensemble(), torch.randn(4, 8, 5)
    model.train()(x)[:, 0].sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["blocks.0.members.0.lstm.weight_ih_l0"].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for name, g in grads.items() if ".members.0." not in name)


def test_rul_loss_fits_each_member_to_the_target():
    """Each member's own squared error to the target, averaged; not the error of the members' mean, which would let
    members that err in opposite directions cancel out and learn nothing."""
    model, windows, target = ensemble().train(), torch.randn(6, 8, 5), torch.full((6,), 50.0)
    torch.manual_seed(1)
    loss = rul_loss(model, (windows, target))
    torch.manual_seed(1)  # the same input noise as inside the loss
    per_member = model(windows + INPUT_NOISE * torch.randn_like(windows)) / RUL_CAP
    each = ((per_member - target[:, None] / RUL_CAP) ** 2).mean()
    of_the_mean = ((per_member.mean(dim=-1) - target / RUL_CAP) ** 2).mean()
    torch.testing.assert_close(loss, each)
    assert each > of_the_mean


def test_single_member_keeps_the_plain_lstm_layout():
    """Checkpoints written before ensembles (no `members` in the manifest) load into the same names."""
    names = set(build_model({"arch": "lstm", "n_features": 5, "window": 8}).state_dict())
    assert "blocks.0.lstm.weight_ih_l0" in names and "head.mlp.0.weight" in names


def test_a_student_is_fitted_to_its_teacher_not_to_the_target():
    """Distillation (--teacher): the loss compares the student with the teacher on the same noisy window, so a
    student identical to its teacher has nothing left to learn however far both are from the true RUL."""
    torch.manual_seed(0)
    teacher = build_model({"arch": "lstm", "n_features": 5, "window": 8, "dropout": 0.0, "members": 1}).eval()
    student = copy.deepcopy(teacher).train()
    batch = (torch.randn(6, 8, 5), torch.full((6,), 50.0))
    assert rul_loss(student, batch) > 1e-3
    assert rul_loss(student, batch, teacher=lambda windows: teacher(windows).float()) == 0.0
