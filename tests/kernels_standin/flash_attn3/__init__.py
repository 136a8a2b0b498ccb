"""Stand-in for the FA3 hub kernel (tests only): the same flash_attn_func signature in plain torch.

Laid out like a cached hub kernel (build/<variant>/<package>/__init__.py + metadata.json) so `kernels` loads it."""
import torch

IS_STANDIN = True


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), **unused):
    """q: (B, T, H, D), k/v: (B, S, Hkv, D) -> (B, T, H, D); window (left, right), -1 = unbounded."""
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    if H != Hkv:
        k = k.repeat_interleave(H // Hkv, dim=2)
        v = v.repeat_interleave(H // Hkv, dim=2)
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale
    rows = torch.arange(T, device=q.device)[:, None]
    cols = torch.arange(S, device=q.device)[None, :]
    left, right = window_size
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device)
    if causal:
        allowed &= cols <= rows
    if left >= 0:
        allowed &= cols >= rows - left
    if right >= 0:
        allowed &= cols <= rows + right
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(dim=-1), v.float())
    return out.to(q.dtype)
