"""dlearn's ImageNet models against their PyTorch references, with the same weights: torchvision's
`resnet50` (random weights, seed 0, BatchNorm statistics drawn too, so that they matter; eval
mode) and timm's `vit_tiny_patch16_224`, `vit_small_patch32_224` and `vit_base_patch16_224`
(random weights, the head drawn too) on a batch of random 224x224 images, their logits against
dlearn's `resnet50` and `vit` loaded with `imagenet_resnet.load_torchvision` and `vit.load_timm`,
and the parameter counts.

  python experiments/benchmarks/reference_models.py --torch_python=/tmp/tv/bin/python

The torch side runs in `--torch_python` (an environment with torch, torchvision and timm; README,
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


# dlearn model and its settings -> the reference's name
MODELS = {
  'resnet50': ('resnet50', {}),
  'vit_tiny_patch16_224': ('vit', {'size': 'Ti', 'patch': 16}),
  'vit_small_patch32_224': ('vit', {'size': 'S', 'patch': 32}),
  'vit_base_patch16_224': ('vit', {'size': 'B', 'patch': 16}),
}


def torch_side(output: str, name: str, batch: int):
  import timm
  import torch
  import torchvision

  torch.manual_seed(0)
  if name == 'resnet50':
    model = torchvision.models.resnet50()
  else:
    model = timm.create_model(name, pretrained=False)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
    if name != 'resnet50':  # timm starts the head at zero: draw it, so that logits say something
      model.head.weight.normal_(0, 0.02)
      model.head.bias.normal_(0, 0.02)
  model.eval()
  images = torch.rand(batch, 3, 224, 224)
  with torch.no_grad():
    logits = model(images).numpy()
  arrays = {f'state/{k}': v.numpy() for k, v in model.state_dict().items()}
  count = sum(p.numel() for p in model.parameters())
  np.savez(output, images=images.numpy(), logits=logits, count=count, **arrays)
  print(f'torch={torch.__version__} torchvision={torchvision.__version__} timm={timm.__version__}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--torch_python', default=sys.executable)
  parser.add_argument('--side', default='both', choices=['both', 'torch'])
  parser.add_argument('--output', default='')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--model', default='resnet50', help='the torch side: one reference')
  args = parser.parse_args()
  if args.side == 'torch':
    return torch_side(args.output, args.model, args.batch)
  import jax
  import ml_collections
  from flax import nnx

  from dlearn import configs, models

  rows, versions = {}, {}
  for name in args.models.split(','):
    with tempfile.TemporaryDirectory() as folder:
      path = os.path.join(folder, 'reference.npz')
      result = subprocess.run(
        [args.torch_python, os.path.abspath(__file__), '--side=torch', f'--output={path}',
         f'--model={name}', f'--batch={args.batch}'],
        capture_output=True, text=True,
      )  # fmt: skip
      if result.returncode:
        raise SystemExit(f'error: the torch side failed:\n{result.stderr[-2000:]}')
      versions = dict(v.split('=') for v in result.stdout.split())
      reference = dict(np.load(path))
    state = {k[len('state/') :]: v for k, v in reference.items() if k.startswith('state/')}
    model_name, section = MODELS[name]
    config = configs.base()
    config.model = model_name
    config[{'resnet50': 'imagenet_resnet', 'vit': 'vit'}[model_name]] = ml_collections.ConfigDict(
      section
    )
    family = models.family_of(config)
    model = family.create(
      config, num_classes=1000, input_shape=(224, 224, 3), rngs=nnx.Rngs(0), axis_name=None,
      part_axis=None,
    )  # fmt: skip
    family.load_torch_state_dict(model, state, config)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    images = reference['images'].transpose(0, 2, 3, 1)
    logits = np.asarray(jax.jit(lambda x: model(x, train=False))(images))
    expected = reference['logits']
    rows[name] = {
      'parameters': count,
      'reference_parameters': int(reference['count']),
      'max_abs_logit_difference': float(np.abs(logits - expected).max()),
      'max_abs_logit': float(np.abs(expected).max()),
      'same_top1': int((logits.argmax(-1) == expected.argmax(-1)).sum()),
      'batch': args.batch,
    }
    row = rows[name]
    print(
      f'{name}: {count:,} parameters (reference {row["reference_parameters"]:,}); logits '
      f'differ by at most {row["max_abs_logit_difference"]:.2e} (largest logit '
      f'{row["max_abs_logit"]:.2f}); same top-1 for {row["same_top1"]}/{args.batch}'
    )
  sys.path.insert(0, HERE)
  from results_file import machine_kind, write

  kind = machine_kind()
  print(write(f'reference_models-{kind}', kind, rows, versions))


if __name__ == '__main__':
  main()
