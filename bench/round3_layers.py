"""AP of an AidedDETR checkpoint's encoder proposals (top 30 cells) and of each decoder layer (issue 31), kept
for one commit: python bench/round3_layers.py runs/main-seed0/checkpoints/last.pth"""
import torch, sys
torch.set_num_threads(1)
import os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from detr_nb.checkpoint import model_from_checkpoint
from detr_nb.evaluate import evaluate
from detr_nb.data.datasets import build_dataset
from detr_nb.config import MAIN_JOB_SYNTHETIC
m = model_from_checkpoint(sys.argv[1]); m.eval()
val = build_dataset('synthetic', 'val', 'cpu', **MAIN_JOB_SYNTHETIC)
orig = type(m).forward
for which in ['enc', 0, 1, 2]:
    def fwd(self, *a, which=which, **k):
        out = orig(self, *a, **k)
        if which == 'enc':
            lo, bo = out['enc_outputs']['pred_logits'], out['enc_outputs']['pred_boxes']
            s = lo[..., :-1].amax(-1); idx = s.topk(30, 1).indices
            return {'pred_logits': lo.gather(1, idx[..., None].expand(-1, -1, lo.shape[-1])), 'pred_boxes': bo.gather(1, idx[..., None].expand(-1, -1, 4))}
        return out['aux_outputs'][which] if which < 2 else out
    type(m).forward = fwd
    st = evaluate(m, val, verbose=False)
    print(which, round(st['AP'], 4), round(st['AP50'], 4), round(st['AP75'], 4))
