"""The reference for `bench.py --only transfer`: a frozen torchvision backbone with a new head, trained the way
transfer-learning tutorials write it (ImageFolder, transforms, DataLoader, a loop over every image every epoch).

    python scripts/plain_transfer_loop.py TRAIN_DIR VAL_DIR --model densenet121 --weights W.pth [--epochs 5]

One departure from the tutorials, so both sides compute the same function: the frozen backbone is kept in eval mode
(a tutorial's model.train() would let batch norm use batch statistics and move its running ones). Prints one JSON
line: seconds per epoch, images per second, validation accuracy per epoch.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def build(name: str, weights: str, classes: int) -> tuple[nn.Module, nn.Module]:
    """The backbone with its pretrained weights and every parameter frozen, and a new head in its classifier's place."""
    model = getattr(torchvision.models, name)(weights=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    for p in model.parameters():
        p.requires_grad = False
    attr = "fc" if hasattr(model, "fc") else "classifier"
    width = getattr(model, attr).in_features
    head = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, classes), nn.LogSoftmax(1))
    setattr(model, attr, head)
    return model, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_dir")
    parser.add_argument("val_dir")
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    preset = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    train_set = datasets.ImageFolder(args.train_dir, preset)
    val_set = datasets.ImageFolder(args.val_dir, preset)
    train_loader = DataLoader(train_set, args.batch, shuffle=True, num_workers=args.workers)
    val_loader = DataLoader(val_set, args.batch, num_workers=args.workers)
    model, head = build(args.model, args.weights, len(train_set.classes))
    model.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.003)
    criterion = nn.NLLLoss()
    epochs = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.eval()  # the frozen backbone: batch norm keeps its statistics
        head.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        seconds = time.perf_counter() - start
        epochs.append({"seconds": seconds, "val_acc": correct / len(val_set)})
    images = len(train_set) + len(val_set)
    print(json.dumps({"epochs": epochs, "img_per_s": [images / e["seconds"] for e in epochs]}))


if __name__ == "__main__":
    main()
