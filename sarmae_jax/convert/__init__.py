"""PyTorch interop: read and write PyTorch / safetensors state dicts, strictly.

  state_dicts.py   file I/O (.pth/.pt/.bin via torch, .safetensors, HF directories) and the strict reader
  vit_layout.py    pure mappings between our Flax ViT blocks and the timm / MAE / HF tensor layouts
  teachers.py      frozen-teacher checkpoints (official DINOv3, transformers DINOv3, timm ViT / our exports)
  torch_import.py  released SARMAE and ImageNet MAE checkpoints -> params
  torch_export.py  params -> timm ViT, HF ViTModel / ViTMAEForPreTraining, released SARMAE format
  cli.py           `sarmae-import`, `sarmae-export`
torch is needed only for `.pth` files; safetensors suffices for the rest.
"""
