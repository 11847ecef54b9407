"""MTCNN (Zhang et al. 2016: "Joint Face Detection and Alignment using Multitask Cascaded Convolutional
Networks"): three small CNNs in a cascade. P-Net proposes windows over an image pyramid, R-Net and O-Net
refine and filter them.

    detector = MTCNN()
    boxes = detector(gray_or_bgr, min_face=40)    # [(x, y, w, h)], left to right

Our own implementation of the paper's inference; the weights are the original authors' models as the
PyPI package facenet-pytorch 2.6.0 ships them (MIT licence; its wheel, sha256 ecb82b27...9f19cca, holds
facenet_pytorch/data/{pnet,rnet,onet}.pt), copied unchanged into mtcnn.npz here so that nothing is downloaded
at run time and facenet-pytorch's pins (torch < 2.3) do not bind us. Re-make the file with:

    pip download facenet-pytorch==2.6.0 --no-deps && unzip facenet_pytorch-2.6.0-py3-none-any.whl 'facenet_pytorch/data/*'
    python -c "import torch, numpy as np; np.savez_compressed('mtcnn.npz', **{f'{n}.{k}': v.numpy()
        for n in ('pnet', 'rnet', 'onet') for k, v in torch.load(f'facenet_pytorch/data/{n}.pt').items()})"

The models were trained in Caffe on RGB images scaled to [-1, 1]; their dense layers read the feature maps
in (width, height, channel) order, hence the permute before flattening.
"""
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, nms, roi_align

WEIGHTS = Path(__file__).with_name("mtcnn.npz")
THRESHOLDS = (0.6, 0.7, 0.7)   # face probability each stage keeps (the paper's)
PYRAMID_FACTOR = 0.709         # between pyramid levels: the area halves
CELL, STRIDE = 12, 2           # P-Net's window and step, at each pyramid level


class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)   # face probability map, box offsets


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x)   # (landmarks, dense6_3, unused here)


def load_nets():
    """P-Net, R-Net, O-Net with the shipped weights, in eval mode."""
    arrays = np.load(WEIGHTS)
    nets = []
    for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        net = cls()
        state = {k.split(".", 1)[1]: torch.from_numpy(arrays[k]) for k in arrays.files if k.startswith(name + ".")}
        net.load_state_dict(state, strict=name != "onet")  # O-Net's landmark layer is not used
        # channels-last: oneDNN's max pooling of NCHW maps of this size took 4 ms a call, 0.6 ms channels-last
        # (R-Net on 40 windows: 8.8 ms -> 3.2 ms; one core, AVX-512)
        nets.append(net.eval().to(memory_format=torch.channels_last))
    return nets


def _calibrate(boxes, offsets):
    """Boxes (x1, y1, x2, y2) moved by the nets' offsets (fractions of the box's size)."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * size


def _square(boxes):
    """The square of each box's longer side, on the same centre."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], 1)


def _crops(image, boxes, side):
    """(N, 3, side, side) windows of the normalised image (3, H, W) at `boxes`, zero beyond its edges: each
    output pixel the mean of bilinear samples over its share of the box (roi_align, one call for all boxes:
    the paper's area resampling, without a Python loop over the boxes)."""
    return roi_align(image[None], [boxes], output_size=(side, side), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)


class MTCNN:
    """The cascade as a detector: an image (gray or BGR) -> face boxes (x, y, w, h), left to right."""

    name = "mtcnn"

    def __init__(self, thresholds=THRESHOLDS):
        self.pnet, self.rnet, self.onet = load_nets()
        self.thresholds = thresholds

    def __call__(self, image, min_face=40):
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        with torch.inference_mode():
            boxes = self.detect(image, max(12, min_face))
        found = [(round(x1), round(y1), round(x2 - x1), round(y2 - y1)) for x1, y1, x2, y2 in boxes.tolist()]
        return sorted(box for box in found if box[2] >= min_face)

    def detect(self, rgb, min_face):
        """(N, 4) float boxes (x1, y1, x2, y2) in the image's pixels."""
        image = normalise(rgb)
        boxes = self._propose(rgb, min_face)
        for net, side, threshold in ((self.rnet, 24, self.thresholds[1]), (self.onet, 48, self.thresholds[2])):
            if not len(boxes):
                break
            probs, offsets = net(_crops(image, _square(boxes), side).contiguous(memory_format=torch.channels_last))
            keep = probs >= threshold
            boxes, probs = _calibrate(_square(boxes)[keep], offsets[keep]), probs[keep]
            boxes = boxes[nms(boxes, probs, 0.7)]
        return boxes

    def _propose(self, rgb, min_face):
        """P-Net over the pyramid: windows with their probabilities, NMS within and across levels. Each level
        is shrunk by OpenCV from the 8-bit image (INTER_AREA: the paper's resampling; 5x faster than torch's
        area interpolation of the float image)."""
        height, width = rgb.shape[:2]
        scale, found, previous = CELL / min_face, [], rgb
        while min(height, width) * scale >= CELL:
            size = (int(width * scale + 1), int(height * scale + 1))
            # each level shrunk from the one before (a frame read once, not once per level: 6 of a 640x480
            # frame's 18 ms in P-Net's stage went to shrinking the whole frame again for every level)
            previous = cv2.resize(previous, size, interpolation=cv2.INTER_AREA)
            level = normalise(previous)[None]
            probs, offsets = self.pnet(level.contiguous(memory_format=torch.channels_last))
            ys, xs = torch.nonzero(probs[0] >= self.thresholds[0], as_tuple=True)
            if len(ys):
                corner = torch.stack([xs, ys], 1).float() * STRIDE
                boxes = torch.cat([corner, corner + CELL], 1) / scale
                score = probs[0, ys, xs]
                keep = nms(boxes, score, 0.5)
                found.append((_calibrate(boxes[keep], offsets[0][:, ys, xs].T[keep]), score[keep]))
            scale *= PYRAMID_FACTOR
        if not found:
            return torch.zeros(0, 4)
        boxes, scores = torch.cat([b for b, _ in found]), torch.cat([s for _, s in found])
        return boxes[batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.long), 0.7)]


def normalise(rgb):
    """(3, H, W) float32 in [-1, 1] from an 8-bit RGB image, as the nets were trained."""
    return (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() - 127.5) / 128.0
