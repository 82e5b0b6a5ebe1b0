"""Round three's second screening (issue 31), kept for one commit: the candidates as patches on bench/convergence.py.

    python bench/round3_screen.py prior+lr3e-3 enc=0,bs=20 0      # base variant, patches, seed: 1,500 steps
    STEPS=20 EVERY=20 python bench/round3_screen.py prior+lr3e-3 roi=5 0   # a smoke run

Patches: encprior=LO:HI (a Gaussian locality bias on the encoder self-attention, per-head scales), iou4=F (the
matching cost -p*IoU^4 from fraction F of the steps, DEIMv2), prior=LO:HI (the box prior's sharpness), beta95
(AdamW betas 0.9/0.95), roi=R (RoIAlign R x R of layer1 features in each reference box, added to the queries,
Sparse R-CNN), enc=N / dec=N / q=N (layers, queries), bs=N, lr=X, l1=W (L1 weight), bblr=X (backbone lr).
One thread each (THREADS); results appended to /tmp/exp/results.jsonl.
"""
import json, math, os, sys, types
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
torch.set_num_threads(int(os.environ.get('THREADS', '1')))
import convergence as C
from detr_nb.aids import model as AM, loss as AL
from detr_nb.aids.model import box_prior, grid_anchors, gather, inverse_sigmoid, box_sine_embedding, ANCHOR_WH
from detr_nb.models import transformer as T
from detr_nb.models.box_ops import box_cxcywh_to_xyxy, generalized_box_iou, box_iou
from detr_nb.trainer import Trainer
from torchvision.ops import roi_align
from scipy.optimize import linear_sum_assignment
from torch.nn.utils.rnn import pad_sequence

base, patches, seed = sys.argv[1], sys.argv[2].split(','), int(sys.argv[3])
P = {p.split('=')[0]: (p.split('=')[1] if '=' in p else None) for p in patches if p}
STATE = {'frac': 0.0}

orig_ts = Trainer.train_step
def ts(self, mb):
    STATE['frac'] = self.step / max(self.cfg.max_steps or 1, 1)
    return orig_ts(self, mb)
Trainer.train_step = ts

orig_init = AM.AidedDETR.__init__
def init(self, *a, **k):
    orig_init(self, *a, **k)
    nh = self.transformer.nhead
    if 'prior' in P:
        lo, hi = (math.log(float(x)) for x in P['prior'].split(':'))
        self.prior_scales = torch.linspace(lo, hi, nh).exp()
    if 'roi' in P:
        R = int(P['roi'] or 5); self.roi_R = R
        l1 = self.backbone[0].body.layer1
        c1 = l1[-1].conv2.weight.shape[0]
        self.roi_proj = torch.nn.Linear(c1 * R * R, self.transformer.d_model)
        l1.register_forward_hook(lambda m, i, o: setattr(self, '_f1', o))
    if 'encprior' in P:
        lo, hi = (math.log(float(x)) for x in P['encprior'].split(':'))
        self.enc_scales = torch.linspace(lo, hi, nh).exp()
AM.AidedDETR.__init__ = init

def enc_layer_forward(self, src, key_padding_mask=None, pos=None, attn_mask=None):
    q = k = src if pos is None else src + pos
    src = self.norm1(src + self.self_attn(q, k, src, key_padding_mask=key_padding_mask, attn_mask=attn_mask))
    return self.norm2(src + self._ffn(src))
T.TransformerEncoderLayer.forward = enc_layer_forward

def forward(self, images, mask=None):
    if mask is None:
        mask = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.bool, device=images.device)
    feat, fmask, pos = self.backbone(images, mask)
    src = self.input_proj(feat).flatten(2).transpose(1, 2)
    pos, kpm = pos.flatten(2).transpose(1, 2), fmask.flatten(1)
    anchors = grid_anchors(fmask, ANCHOR_WH)
    eb = box_prior(anchors, anchors[..., :2], self.enc_scales) if hasattr(self, 'enc_scales') else None
    memory = src
    for layer in self.transformer.encoder.layers:
        memory = layer(memory, key_padding_mask=kpm, pos=pos, attn_mask=eb)
    feats = self.enc_output_norm(self.enc_output(memory))
    enc_logits = self.enc_class_embed(feats)
    enc_boxes = (self.enc_bbox_embed(feats) + inverse_sigmoid(anchors)).sigmoid()
    score = enc_logits[..., :-1].amax(-1).masked_fill(kpm, float("-inf"))
    cells = score.topk(score.shape[1], dim=1).indices.repeat(1, self.num_queries)[:, :self.num_queries]
    ref, tgt = gather(enc_boxes, cells), gather(feats, cells)
    logits, boxes = [], []
    decoder = self.transformer.decoder
    B, Q = ref.shape[:2]
    if hasattr(self, 'roi_proj'):
        vh = (~mask[:, :, 0]).sum(1).float(); vw = (~mask[:, 0, :]).sum(1).float()
        scale = torch.stack([vw, vh, vw, vh], -1)[:, None]          # (B, 1, 4)
    for layer in decoder.layers:
        if hasattr(self, 'roi_proj'):
            big = torch.cat([ref[..., :2], ref[..., 2:] * 1.25], -1)
            xyxy = torch.cat([big[..., :2] - big[..., 2:] / 2, big[..., :2] + big[..., 2:] / 2], -1) * scale
            rois = roi_align(self._f1, list(xyxy), self.roi_R, spatial_scale=0.25, sampling_ratio=2, aligned=True)
            tgt = tgt + self.roi_proj(rois.flatten(1)).view(B, Q, -1)
        query_pos = self.ref_point_head(box_sine_embedding(ref, tgt.shape[-1]))
        tgt = layer(tgt, memory, memory_key_padding_mask=kpm, pos=pos, query_pos=query_pos,
                    memory_mask=box_prior(ref, anchors[..., :2], self.prior_scales))
        hs = decoder.norm(tgt)
        box = (self.bbox_embed(hs) + inverse_sigmoid(ref)).sigmoid()
        logits.append(self.class_embed(hs)); boxes.append(box)
        ref = box.detach()
    out = self.outputs(torch.stack(logits), torch.stack(boxes))
    out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes}
    return out
AM.AidedDETR.forward = forward

if 'iou4' in P:
    start = float(P['iou4'] or 0.67)
    orig_fwd = AL.AidedMatcher.forward
    @torch.no_grad()
    def mfwd(self, outputs, targets):
        if STATE['frac'] < start:
            return orig_fwd(self, outputs, targets)
        logits = outputs["pred_logits"].float(); boxes = outputs["pred_boxes"].float()
        tl = pad_sequence([t["labels"] for t in targets], batch_first=True)
        tb = pad_sequence([t["boxes"].float() for t in targets], batch_first=True, padding_value=0.5)
        prob = logits[..., :-1].sigmoid().gather(-1, tl[:, None, :].expand(-1, logits.shape[1], -1))
        iou = torch.stack([box_iou(box_cxcywh_to_xyxy(b), box_cxcywh_to_xyxy(t))[0] for b, t in zip(boxes, tb)])
        cost = -(prob * iou ** 4)
        cost = cost.nan_to_num(nan=1e8).cpu()
        out = []
        for c, t in zip(cost, targets):
            r, cc = linear_sum_assignment(c[:, :len(t["labels"])])
            out.append((torch.as_tensor(r, dtype=torch.int64), torch.as_tensor(cc, dtype=torch.int64)))
        return out
    AL.AidedMatcher.forward = mfwd

if 'beta95' in P or 'bblr' in P:
    orig_tinit = Trainer.__init__
    def tinit(self, *a, **k):
        orig_tinit(self, *a, **k)
        for g in self.optimizer.param_groups:
            if 'beta95' in P: g['betas'] = (0.9, 0.95)
    Trainer.__init__ = tinit

extra = {}
mo = {}
if 'enc2' in P: mo['enc_layers'] = 2
if 'enc' in P: mo['enc_layers'] = int(P['enc'])
if 'q' in P: mo['num_queries'] = int(P['q'])
if 'dec' in P: mo['dec_layers'] = int(P['dec'])
if 'ffn' in P: mo['dim_feedforward'] = int(P['ffn'])
if mo: extra['model_overrides'] = mo
if 'l1' in P: extra['weight_dict'] = {**C.AIDED_LOSS, 'loss_bbox': float(P['l1'])}
if 'bs' in P: extra['batch_size'] = int(P['bs'])
if 'lr' in P: extra['lr'] = float(P['lr'])
if 'bblr' in P: extra['lr_backbone'] = float(P['bblr'])
if 'wd' in P: extra['weight_dict'] = extra.get('weight_dict')
name = base + ('+' + '+'.join(patches) if patches != [''] else '')
C.MEANS[name] = (extra, name)
orig_resolve = C.resolve
def resolve(n):
    if n == name:
        m, o, s, d = orig_resolve(base)
        s = dict(s); s.update({k: v for k, v in extra.items() if k != 'model_overrides'}); o = {**o, **extra.get('model_overrides', {})}
        return m, o, s, name
    return orig_resolve(n)
C.resolve = resolve
args = types.SimpleNamespace(budget_s=None, steps=int(os.environ.get('STEPS',1500)), eval_every=int(os.environ.get('EVERY',500)), runs='/tmp/exp/runs', eval_images=150,
                             eval_every_s=None, workers=0, data_kwargs='{}', data_root=None)
r = C.run_variant(name, seed, args)
r = {k: v for k, v in r.items() if k in ('variant', 'seed', 'final', 'curve', 'steps_per_s', 'train_s')}
print(json.dumps(r))
with open('/tmp/exp/results.jsonl', 'a') as f:
    f.write(json.dumps(r) + '\n')
