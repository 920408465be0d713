"""TPVFormer's point sampling stays fp32 under torch.autocast.

TPVFormerEncoder.point_sampling projects the 3D reference points into every camera with lidar2img
(`# This function must use fp32!!!` upstream). Its @force_fp32 only acts under mmcv's own fp16 mode
(fp16_enabled, set by wrap_fp16_model), not under torch.autocast, which would run its matmul in fp16
on NPU / CUDA (bf16 on CPU) and shift the projected pixels. With `--amp` (torch.autocast for the
device type) it runs with autocast off; without it, nothing changes.
"""

from patchkit.overlay import original, replace


def _fp32(upstream, self, reference_points, pc_range, img_metas):
    from patchkit.train.dispatch import full_precision

    with full_precision(reference_points):
        return upstream(self, reference_points, pc_range, img_metas)


@replace("tpvformer04.modules.encoder:TPVFormerEncoder.point_sampling", upstream="tpvformer", fingerprint="8a9150d3ee37ca32-cef89e90")
def point_sampling_04(self, reference_points, pc_range, img_metas):
    return _fp32(original(point_sampling_04), self, reference_points, pc_range, img_metas)


@replace("tpvformer10.modules.encoder:TPVFormerEncoder.point_sampling", upstream="tpvformer", fingerprint="8a9150d3ee37ca32-cef89e90")
def point_sampling_10(self, reference_points, pc_range, img_metas):
    return _fp32(original(point_sampling_10), self, reference_points, pc_range, img_metas)
