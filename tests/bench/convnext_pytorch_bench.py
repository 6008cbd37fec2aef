#!/usr/bin/python3
"""The PyTorch side of convnext_bench: the same ConvNeXt V2 training steps in
PyTorch's Python front end, for the issue's comparison on the same machine.

The model follows facebookresearch/ConvNeXt-V2 (models/convnextv2.py, and
models/fcmae.py with the sparse encoder emulated densely as Offsite does:
masked cells zeroed after the stem and around every depthwise convolution).
Same configuration as tests/bench/convnext_bench.cc: dims 40-80-160-320,
depths 2-2-6-2, stem stride 2, 32x32 single-channel input, batch 128, AdamW.

  /usr/bin/python3 tests/bench/convnext_pytorch_bench.py [--mode finetune|fcmae|both]
      [--steps N] [--threads N] [--channels-last]

Debian's python3-torch is the same 1.13.1 as libtorch-dev, so both sides run
the same ATen kernels; what differs is the front end and the model code.
"""
import argparse
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 128
WARMUP = 3


class LayerNorm(nn.Module):
    """convnextv2.py's LayerNorm: channels_last or channels_first."""

    def __init__(self, dim, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.data_format = data_format
        self.dim = (dim,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.dim, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x, mask=None):
        # mask: (N, 1, H, W), 1 = masked; the dense emulation of the sparse conv.
        shortcut = x
        if mask is not None:
            x = x * (1 - mask)
        x = self.dwconv(x)
        if mask is not None:
            x = x * (1 - mask)
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(x)))))
        x = x.permute(0, 3, 1, 2)
        return shortcut + x


class ConvNeXtV2(nn.Module):
    def __init__(self, in_chans=1, num_classes=10, depths=(2, 2, 6, 2),
                 dims=(40, 80, 160, 320), stem=2):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=stem, stride=stem),
            LayerNorm(dims[0], eps=1e-6, data_format="channels_first")))
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(dims[i]) for _ in range(depths[i])) for i in range(len(dims)))
        self.num_classes = num_classes
        if num_classes:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=.02)
            nn.init.constant_(m.bias, 0)

    def features(self, x, mask=None):
        """mask on the patch grid (N, 1, h, w) or None."""
        for i, stage in enumerate(self.stages):
            x = self.downsample_layers[i](x)
            m = None
            if mask is not None:
                scale = x.shape[-1] // mask.shape[-1]
                m = mask.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
                if i == 0:
                    x = x * (1 - m)
            for block in stage:
                x = block(x, m)
        return x

    def forward(self, x):
        return self.head(self.norm(self.features(x).mean([-2, -1])))


class FCMAE(nn.Module):
    def __init__(self, encoder, decoder_dim=512, patch=16, mask_ratio=0.6, in_chans=1):
        super().__init__()
        self.encoder = encoder
        self.patch = patch
        self.mask_ratio = mask_ratio
        dim = encoder.stages[-1][0].dwconv.in_channels
        self.proj = nn.Conv2d(dim, decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = nn.Sequential(Block(decoder_dim))
        self.pred = nn.Conv2d(decoder_dim, patch * patch * in_chans, 1)
        nn.init.normal_(self.mask_token, std=.02)

    def gen_random_mask(self, x):
        n = x.shape[0]
        side = x.shape[2] // self.patch
        length = side * side
        keep = int(length * (1 - self.mask_ratio))
        ids_restore = torch.argsort(torch.argsort(torch.rand(n, length), dim=1), dim=1)
        return (ids_restore >= keep).float().reshape(n, 1, side, side)

    def patchify(self, imgs):
        p = self.patch
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def forward(self, imgs):
        mask = self.gen_random_mask(imgs)
        x = self.proj(self.encoder.features(imgs, mask))
        m = mask.repeat_interleave(x.shape[-1] // mask.shape[-1], 2).repeat_interleave(
            x.shape[-1] // mask.shape[-1], 3)
        x = x * (1 - m) + self.mask_token * m
        pred = self.pred(self.decoder(x))
        pred = pred.flatten(2).transpose(1, 2)
        target = self.patchify(imgs)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.e-6) ** .5
        loss = (pred - target).pow(2).mean(dim=-1)
        flat = mask.flatten(1)
        return (loss * flat).sum() / flat.sum()


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(name, step, steps):
    before = peak_rss_mib()
    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    print("%-10s %8.1f images/s  %7.1f ms/step  peak RSS %7.1f MiB (+%.1f)" %
          (name, steps * BATCH / elapsed, 1000 * elapsed / steps, peak_rss_mib(),
           peak_rss_mib() - before), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="both", choices=["finetune", "fcmae", "both"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stem", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print("PyTorch %s, %d threads; ConvNeXt V2 dims 40-80-160-320, depths 2-2-6-2, stem %d, "
          "32x32x1, batch %d%s" % (torch.__version__, torch.get_num_threads(), args.stem, BATCH,
                                   ", channels_last" if args.channels_last else ""))
    torch.manual_seed(0)
    images = torch.randn(BATCH, 1, 32, 32)
    labels = torch.randint(0, 10, (BATCH,))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    images = images.contiguous(memory_format=fmt)
    if args.mode in ("finetune", "both"):
        model = ConvNeXtV2(stem=args.stem).to(memory_format=fmt)
        print("finetune parameters: %d" % sum(p.numel() for p in model.parameters()))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        measure("finetune", step, args.steps)
    if args.mode in ("fcmae", "both"):
        encoder = ConvNeXtV2(num_classes=0, stem=args.stem)
        fcmae = FCMAE(encoder, patch=args.stem * 8).to(memory_format=fmt)
        print("fcmae parameters: %d" % sum(p.numel() for p in fcmae.parameters()))
        opt = torch.optim.AdamW(fcmae.parameters(), lr=1e-3, betas=(0.9, 0.95))

        def step():
            loss = fcmae(images)
            opt.zero_grad()
            loss.backward()
            opt.step()
        measure("fcmae", step, args.steps)


if __name__ == "__main__":
    main()
