"""The stated limits on what a user hands the platform, each checked before memory is allocated or a file is read.

docs/security.md gives the reason for each. A value past a limit is an `error: <source>: <field>: <reason>`,
exit 2, never an allocation traceback.
"""

from __future__ import annotations

from search_spaces.policy import MAX_OPS_PER_SUB_POLICY, MAX_POLICY_BYTES, MAX_SUB_POLICIES

# pixels a side
MAX_INPUT_SIDE = 1024  # a network input or crop: the paper's largest is 384x288; 1024x1024 heatmap batches fit a GPU
MAX_SYNTH_SIDE = 4096  # a SynthPose image: rendering peaks at ~40 bytes a pixel (650 MB at 4096x4096)

# counts
MAX_SYNTH_IMAGES = 200_000  # per SynthPose split (COCO train2017 has 118,287 images); each split's JSON is in memory
MAX_COCO_IMAGES = 1_000_000  # entries of a COCO file's `images` list

# bytes of a file, read with stat before the file is opened for parsing (JSON and YAML take 5-10x their size
# in memory once parsed)
MIB = 1024 * 1024
MAX_CONFIG_BYTES = 1 * MIB  # an experiment YAML: the shipped ones are under 4 KiB
# MAX_POLICY_BYTES (4 MiB, search_spaces.policy): a policy JSON; 1024 sub-policies of 16 ops are about 1.2 MiB
MAX_ANNOTATIONS_BYTES = 512 * MIB  # COCO JSON: person_keypoints_train2017.json is 238 MiB
MAX_PREDICTIONS_BYTES = 512 * MIB  # COCO results (keypoints or detector boxes)
MAX_JSON_BYTES = MAX_ANNOTATIONS_BYTES  # any other JSON the platform reads (manifests, search state)

__all__ = [
    "MAX_ANNOTATIONS_BYTES", "MAX_COCO_IMAGES", "MAX_CONFIG_BYTES", "MAX_INPUT_SIDE",
    "MAX_JSON_BYTES", "MAX_OPS_PER_SUB_POLICY", "MAX_POLICY_BYTES", "MAX_PREDICTIONS_BYTES", "MAX_SUB_POLICIES",
    "MAX_SYNTH_IMAGES", "MAX_SYNTH_SIDE", "MIB", "human_bytes",
]


def human_bytes(size: int) -> str:
    """1048576 -> '1 MiB'; 1500 -> '1500 bytes'."""
    for unit, scale in (("GiB", 1024**3), ("MiB", MIB), ("KiB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"
