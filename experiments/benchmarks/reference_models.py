"""dlearn's ImageNet models against their PyTorch references, with the same weights: torchvision's
`resnet50` (random weights, seed 0, BatchNorm statistics drawn too, so that they matter; eval
mode) on a batch of random 224x224 images, its logits against dlearn's `resnet50` loaded with
`imagenet_resnet.load_torchvision`, and the two parameter counts.

  python experiments/benchmarks/reference_models.py --torch_python=/tmp/tv/bin/python

The torch side runs in `--torch_python` (an environment with torch and torchvision; README,
"ImageNet-class images", says why this machine needs one of its own) and hands its weights, input
and logits over in an .npz file. Writes experiments/benchmarks/results/reference_models-<machine>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def torch_side(output: str, batch: int):
  import torch
  import torchvision

  torch.manual_seed(0)
  model = torchvision.models.resnet50()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
  model.eval()
  images = torch.rand(batch, 3, 224, 224)
  with torch.no_grad():
    logits = model(images).numpy()
  arrays = {f'state/{k}': v.numpy() for k, v in model.state_dict().items()}
  count = sum(p.numel() for p in model.parameters())
  np.savez(output, images=images.numpy(), logits=logits, count=count, **arrays)
  print(f'torch={torch.__version__} torchvision={torchvision.__version__}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--torch_python', default=sys.executable)
  parser.add_argument('--side', default='both', choices=['both', 'torch'])
  parser.add_argument('--output', default='')
  parser.add_argument('--batch', type=int, default=4)
  args = parser.parse_args()
  if args.side == 'torch':
    return torch_side(args.output, args.batch)
  import jax
  from flax import nnx

  from dlearn.models import imagenet_resnet

  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'reference.npz')
    result = subprocess.run(
      [args.torch_python, os.path.abspath(__file__), '--side=torch', f'--output={path}',
       f'--batch={args.batch}'],
      capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode:
      raise SystemExit(f'error: the torch side failed:\n{result.stderr[-2000:]}')
    versions = dict(v.split('=') for v in result.stdout.split())
    reference = dict(np.load(path))
  state = {k[len('state/') :]: v for k, v in reference.items() if k.startswith('state/')}
  model = imagenet_resnet.ImageNetResNet(1000, (224, 224, 3), rngs=nnx.Rngs(0))
  imagenet_resnet.load_torchvision(model, state)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  logits = np.asarray(
    jax.jit(lambda x: model(x, train=False))(reference['images'].transpose(0, 2, 3, 1))
  )
  expected = reference['logits']
  difference = float(np.abs(logits - expected).max())
  scale = float(np.abs(expected).max())
  print(
    f'resnet50: {count:,} parameters (torchvision {int(reference["count"]):,}); '
    f'logits differ by at most {difference:.2e} (largest logit {scale:.2f}); '
    f'same top-1 for {int((logits.argmax(-1) == expected.argmax(-1)).sum())}/{len(expected)}'
  )
  sys.path.insert(0, HERE)
  from results_file import machine_kind, write

  kind = machine_kind()
  print(write(
    f'reference_models-{kind}',
    kind,
    {'resnet50': {'parameters': count, 'torchvision_parameters': int(reference['count']),
                  'max_abs_logit_difference': difference, 'max_abs_logit': scale,
                  'batch': args.batch}},
    versions,
  ))  # fmt: skip


if __name__ == '__main__':
  main()
