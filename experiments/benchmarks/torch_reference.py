"""PyTorch versions of dlearn's benchmark models, layer for layer, for timing side by side, and
the reference implementations of the ImageNet models (torchvision, timm). Benchmark-only:
`pip install -e ".[benchmark]"`; nothing in dlearn imports this."""

import torch
from torch import nn


class SeedDCNN(nn.Module):
  """The article's CIFAR-10 network (as dlearn.models.cnn.SeedDCNN)."""

  def __init__(self, num_classes=10, image_shape=(32, 32, 3)):
    super().__init__()
    height, width, channels = image_shape
    self.features = nn.Sequential(
      nn.Conv2d(channels, 32, 3, padding=1),
      nn.ReLU(),
      nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3, padding=1),
      nn.ReLU(),
      nn.MaxPool2d(2),
    )
    self.classifier = nn.Sequential(
      nn.Flatten(),
      nn.Linear((height // 4) * (width // 4) * 64, 512),
      nn.ReLU(),
      nn.Linear(512, num_classes),
    )

  def forward(self, x):
    return self.classifier(self.features(x))


class _Block(nn.Module):
  def __init__(self, in_channels, channels, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.norm1 = nn.BatchNorm2d(channels, momentum=0.1)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(channels, momentum=0.1)
    nn.init.zeros_(self.norm2.weight)
    self.shortcut = None
    if stride != 1 or in_channels != channels:
      self.shortcut = nn.Sequential(
        nn.Conv2d(in_channels, channels, 1, stride, bias=False),
        nn.BatchNorm2d(channels, momentum=0.1),
      )

  def forward(self, x):
    y = torch.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return torch.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class ResNet(nn.Module):
  """As dlearn.models.cnn.ResNet: 3x3 stem, stages of basic blocks, global average pool."""

  def __init__(self, num_classes=10, stage_sizes=(2, 2, 2, 2), width=64, channels=3):
    super().__init__()
    self.stem = nn.Sequential(
      nn.Conv2d(channels, width, 3, 1, 1, bias=False),
      nn.BatchNorm2d(width, momentum=0.1),
      nn.ReLU(),
    )
    blocks, in_channels = [], width
    for stage, size in enumerate(stage_sizes):
      for index in range(size):
        blocks.append(_Block(in_channels, width * 2**stage, 2 if stage and not index else 1))
        in_channels = width * 2**stage
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class RNNClassifier(nn.Module):
  """As dlearn.models.rnn.RNNClassifier with one unidirectional layer: cuDNN-style nn.LSTM /
  nn.RNN (tanh: the Elman cell), the final hidden state into a linear head."""

  def __init__(self, num_classes, num_features, hidden_size, cell='lstm'):
    super().__init__()
    layer = {'lstm': nn.LSTM, 'simple': nn.RNN, 'gru': nn.GRU}[cell]
    self.rnn = layer(num_features, hidden_size, batch_first=True)
    self.head = nn.Linear(hidden_size, num_classes)

  def forward(self, x):
    _, state = self.rnn(x)
    hidden = state[0] if isinstance(state, tuple) else state
    return self.head(hidden[-1])


def imagenet_model(model, num_classes, settings):
  """torchvision's resnet50 (model 'resnet50') or timm's ViT of `settings` (size, patch; as
  config.vit), randomly initialised: the networks dlearn's imagenet_resnet.py and vit.py equal."""
  if model == 'resnet50':
    import torchvision

    return torchvision.models.resnet50(num_classes=num_classes)
  import timm

  size = {'Ti': 'tiny', 'S': 'small', 'B': 'base', 'L': 'large'}[settings.get('size', 'S')]
  return timm.create_model(
    f'vit_{size}_patch{settings.get("patch", 16)}_224', num_classes=num_classes, pretrained=False
  )
