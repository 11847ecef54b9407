"""Explanations on real bundled faces and tiny models: captum attributions, filters, layer outputs, figures."""
import matplotlib.image
import matplotlib.text
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fer_kaggle.training import augment
from fer_kaggle.analysis import explain
from fer_kaggle.data.competition import CLASS_NAMES, NUM_CLASSES
from fer_kaggle.models.backbones import build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tensors are tiny, and two threads on a busy 2-core machine spin-wait
    for each other (measured: 3 s for this file with one thread, 35 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stats(demo_train):
    return augment.normalize_stats(demo_train[0])


@pytest.fixture(scope="module")
def faces(demo_train):
    """The first face of six classes: uint8 (6, 48, 48) and their labels."""
    images, labels = demo_train
    rows = [int(np.flatnonzero(labels == c)[0]) for c in range(6)]
    return images[rows], labels[rows]


@pytest.fixture(scope="module", params=["fer_vgg_tiny", "fer_resnet_tiny"])
def trained(request, demo_train, stats):
    """(backbone, model): seeded, 2 SGD steps on 16 real faces, then eval mode with no grads left."""
    images, labels = demo_train
    torch.manual_seed(0)
    model = build_model(request.param, CPU)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = explain.normalise(images[:16], *stats), torch.as_tensor(labels[:16])
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return request.param, model.eval()


def _no_grads(model):
    return all(p.grad is None for p in model.parameters())


def test_normalise_equals_the_eval_pipeline(demo_train, stats):
    images = demo_train[0][:200]
    for mean, std in (stats, (0.0, 1.0), (0.5, 0.25)):
        ours = explain.normalise(images, mean, std)
        assert ours.shape == (200, 1, 48, 48) and ours.dtype == torch.float32
        assert torch.equal(ours, augment.to_tensor(images, augment.eval_pipeline(mean, std)))


def test_load_unit_model_restores_weights_and_stats(tmp_path, trained, faces, stats):
    backbone, model = trained
    unit_dir = tmp_path / "round0" / backbone / "fold0"
    unit_dir.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1, "backbone": backbone,
                "mean": stats[0], "std": stats[1]}, unit_dir / "checkpoint.pt")
    loaded, mean, std = explain.load_unit_model(unit_dir)
    assert (mean, std) == stats and not loaded.training
    assert next(loaded.parameters()).device == CPU
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = explain.normalise(faces[0], mean, std)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_conv_layers_and_the_grad_cam_target(trained, faces, stats):
    backbone, model = trained
    convs = explain.conv_layers(model)
    assert convs and all(isinstance(m, nn.Conv2d) for _, m in convs)
    assert [n for n, _ in convs] == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    last = explain.last_conv_layer(model)
    expected = {"fer_vgg_tiny": "features.10.0", "fer_resnet_tiny": "stages.3.conv2"}[backbone]
    assert explain.layer_name(model, last) == expected  # resnet: not the 1x1 shortcut after it
    # it is the last 3x3 conv the forward pass runs
    ran = []
    handles = [m.register_forward_hook(lambda m, i, o: ran.append(m)) for _, m in convs]
    with torch.no_grad():
        model(explain.normalise(faces[0][:1], *stats))
    for handle in handles:
        handle.remove()
    assert [m for m in ran if m.kernel_size == (3, 3)][-1] is last


def test_a_model_without_convolutions_has_no_grad_cam_target():
    dense = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, NUM_CLASSES))
    assert explain.conv_layers(dense) == []
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        explain.last_conv_layer(dense)


def test_saliency_is_the_abs_input_gradient_of_the_target_logit(trained, faces, stats):
    _, model = trained
    x = explain.normalise(faces[0], *stats)
    targets = np.arange(len(x)) % NUM_CLASSES
    maps = explain.saliency(model, x, targets)
    assert maps.shape == (6, 48, 48) and np.isfinite(maps).all()
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    assert _no_grads(model) and not model.training

    x_ref = x.clone().requires_grad_(True)
    model(x_ref)[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    grad = x_ref.grad.abs()[:, 0]
    model.zero_grad(set_to_none=True)
    assert np.allclose(maps, (grad / grad.amax(dim=(1, 2), keepdim=True)).numpy(), atol=1e-5)

    other = explain.saliency(model, x, (targets + 3) % NUM_CLASSES)
    assert np.abs(other - maps).max(axis=(1, 2)).min() > 0.05  # every face: another class, another map


def _manual_grad_cam(model, layer, x, targets):
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(act=o))
    logits = model(x)
    handle.remove()
    grads = torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), store["act"])[0]
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * store["act"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(48, 48), mode="bilinear")[:, 0].detach()
    return cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)


def test_grad_cam_matches_the_definition_and_depends_on_the_class(trained, faces, stats):
    _, model = trained
    layer = explain.last_conv_layer(model)
    x = explain.normalise(faces[0], *stats)
    targets = torch.as_tensor(faces[1])
    cams = explain.grad_cam(model, layer, x, targets)
    assert cams.shape == (6, 48, 48) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1
    assert all(np.isclose(m.max(), 1) or not m.any() for m in cams)
    assert np.allclose(cams, _manual_grad_cam(model, layer, x, targets).numpy(), atol=1e-4)
    assert _no_grads(model)

    by_class = np.stack([explain.grad_cam(model, layer, x[:2], c) for c in range(NUM_CLASSES)])
    assert np.abs(by_class - by_class[:1]).max() > 0.1  # the map depends on the class explained


def test_grad_cam_without_evidence_is_zero_not_nan(trained, faces, stats):
    backbone, model = trained
    blind = build_model(backbone, CPU)
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.get_classifier().weight[2] = 0  # 'fear' no longer depends on any feature
    x = explain.normalise(faces[0], *stats)
    cams = explain.grad_cam(blind.eval(), explain.last_conv_layer(blind), x, 2)
    assert np.isfinite(cams).all() and not cams.any()
    # the other classes are untouched
    assert np.allclose(explain.grad_cam(blind, explain.last_conv_layer(blind), x, 3),
                       explain.grad_cam(model, explain.last_conv_layer(model), x, 3), atol=1e-5)


def test_visualise_filters_ascends_without_touching_the_model(trained, faces, stats):
    _, model = trained
    name, layer = explain.conv_layers(model)[1]
    with torch.no_grad():  # the 3 channels most active on real faces: not silent ones
        on_faces = explain._run_to(model, layer, explain.normalise(faces[0], *stats)).mean(dim=(0, 2, 3))
    channels = on_faces.argsort(descending=True)[:3].tolist()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # its mode must come back as it was
    try:
        images = explain.visualise_filters(model, layer, channels, steps=24, mean=stats[0], std=stats[1])
        assert model.training
    finally:
        model.eval()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "parameters or BN buffers changed"
    assert _no_grads(model)

    assert images.shape == (3, 48, 48) and images.dtype == np.float32 and np.isfinite(images).all()
    assert np.allclose(images.min(axis=(1, 2)), 0) and np.allclose(images.max(axis=(1, 2)), 1)
    assert (images.std(axis=(1, 2)) > 0.05).all()  # not constant
    assert min(np.abs(images[i] - images[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))) > 0.05
    centred = images - images.mean(axis=(1, 2), keepdims=True)
    neighbours = ((centred[:, :, 1:] * centred[:, :, :-1]).mean(axis=(1, 2))
                  + (centred[:, 1:] * centred[:, :-1]).mean(axis=(1, 2))) / 2
    assert (neighbours / centred.var(axis=(1, 2)) > 0.2).all()  # smooth: white noise's is 0 +- 0.02

    # the ascent at least doubled each channel's score (mean leaky-ReLU'd activation) from its start's
    start = explain._filter_inputs(model, layer, channels, steps=0, mean=stats[0], std=stats[1])
    end = explain._filter_inputs(model, layer, channels, steps=24, mean=stats[0], std=stats[1])
    with torch.no_grad():
        scores = [[float(explain._channel_score(explain._run_to(model, layer, x)[k:k + 1, c])) for x in (start, end)]
                  for k, c in enumerate(channels)]
    assert all(after > 2 * before and after > before + 0.03 for before, after in scores), (name, channels, scores)


def test_layer_outputs_are_the_layers_activations(trained, faces, stats):
    backbone, model = trained
    x = explain.normalise(faces[0][:1], *stats)
    first, last = explain.conv_layers(model)[0][1], explain.last_conv_layer(model)
    expected_shapes = {"fer_vgg_tiny": [(16, 48, 48), (128, 6, 6)],
                       "fer_resnet_tiny": [(16, 24, 24), (128, 3, 3)]}[backbone]
    for layer, shape in zip((first, last), expected_shapes):
        store = {}
        handle = layer.register_forward_hook(lambda m, i, o: store.update(out=o.detach().clone()))
        with torch.no_grad():
            model(x)
        handle.remove()
        acts = explain.layer_outputs(model, layer, x[0])
        assert acts.shape == shape == tuple(store["out"].shape[1:])
        assert np.allclose(acts, store["out"][0].numpy(), atol=1e-6)
        assert not layer._forward_hooks  # its hook is gone
    assert _no_grads(model)


def test_pick_examples_returns_labelled_right_and_wrong_rows():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, NUM_CLASSES, 300)
    labels[labels == 1] = 0  # no 'disgust' face at all
    predicted = np.where(rng.random(300) < 0.5, labels, rng.integers(0, NUM_CLASSES, 300))
    predicted[labels == 3] = 3  # every 'happy' face right
    probs = np.full((300, NUM_CLASSES), 0.01)
    probs[np.arange(300), predicted] = 0.9

    rows = explain.pick_examples(probs, labels, per_class=2, seed=0)
    assert rows == explain.pick_examples(probs, labels, per_class=2, seed=0)
    assert len(set(rows)) == len(rows) and all(isinstance(r, int) for r in rows)
    for c in range(NUM_CLASSES):
        right = [r for r in rows if labels[r] == c and predicted[r] == c]
        wrong = [r for r in rows if labels[r] == c and predicted[r] != c]
        assert len(right) == min(2, ((labels == c) & (predicted == c)).sum())
        assert len(wrong) == min(2, ((labels == c) & (predicted != c)).sum())
    assert not [r for r in rows if labels[r] == 1]
    assert len([r for r in rows if labels[r] == 3]) == 2
    assert [labels[r] for r in rows] == sorted(labels[r] for r in rows)  # class by class, in order
    assert len(explain.pick_examples(probs, labels, per_class=1, seed=5)) == 2 * (NUM_CLASSES - 1) - 1


@pytest.fixture()
def figure_texts(monkeypatch):
    """Every text drawn in each figure saved, by path."""
    texts, save = {}, explain._save

    def recording_save(fig, path):
        texts[str(path)] = " | ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return save(fig, path)

    monkeypatch.setattr(explain, "_save", recording_save)
    return texts


def _read_png(path):
    assert path.exists() and path.stat().st_size > 0
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_figures_are_readable_pngs_with_class_names(tmp_path, faces, figure_texts):
    images, labels = faces
    rng = np.random.default_rng(0)
    sal, cam = rng.random((3, 48, 48)), rng.random((3, 48, 48))
    cam[2] = 0
    path = tmp_path / "figs" / "saliency.png"
    assert explain.plot_saliency_grid(path, images[:3], labels[:3], [0, 3, 2], sal, cam,
                                      cam_layer="features.10.0") == path
    _read_png(path)
    text = figure_texts[str(path)]
    assert "true: angry, predicted: angry (right)" in text
    assert f"true: {CLASS_NAMES[labels[1]]}, predicted: happy (wrong)" in text
    assert "saliency for 'happy'" in text and "Grad-CAM for 'fear': all zero" in text
    assert "features.10.0" in text

    path = tmp_path / "filters.png"
    assert explain.plot_filters(path, rng.random((5, 48, 48)), "features.3.0", [0, 4, 7, 9, 11]) == path
    _read_png(path)
    assert "channel 11" in figure_texts[str(path)] and "features.3.0" in figure_texts[str(path)]

    for shape in ((64, 3, 3), (16, 48, 48)):
        path = tmp_path / f"layer{shape[0]}.png"
        acts = rng.normal(size=shape).astype(np.float32)
        assert explain.plot_layer_outputs(path, images[0], acts, "stages.3.conv2", max_channels=8) == path
        _read_png(path)
        top = int(np.argmax(acts.mean(axis=(1, 2))))
        assert f"channel {top}" in figure_texts[str(path)]
        assert figure_texts[str(path)].count("channel ") == 8


@pytest.mark.slow
def test_load_unit_model_has_the_weights_that_predicted(finished_run):
    """A unit trained with --ema predicts with its EMA weights: the report explains those, not the raw ones."""
    from fer_kaggle.core.runfolder import load_checkpoint
    workdir, _ = finished_run
    ema_dir = workdir / "round0/fer_resnet_tiny/fold1"  # ema 0.9
    state = load_checkpoint(ema_dir)
    model, _, _ = explain.load_unit_model(ema_dir)
    weights = model.state_dict()
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    assert all(torch.equal(weights[k], ema[k]) for k in weights)
    assert any(not torch.equal(weights[k], state["model"][k]) for k in weights if weights[k].is_floating_point())
