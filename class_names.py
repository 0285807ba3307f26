"""Class names of each dataset, in label-column order (for CLIP prompts and reports).

A dataset folder's own `classes.txt` (one name per line, written by the
formatting scripts) wins; otherwise the canonical lists below are used. CUB's
312 attribute names are only available from the dataset's `attributes.txt`.
"""
from __future__ import annotations

from pathlib import Path

from errors import UserError

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# In the order of `categories` in instances_*2014.json (ascending category id).
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

# NUS-WIDE's Concepts81.txt order (alphabetical).
NUSWIDE_CLASSES = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake",
    "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier",
    "grass", "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon", "mountain",
    "nighttime", "ocean", "person", "plane", "plants", "police", "protest", "railroad", "rainbow", "reflection",
    "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue",
    "street", "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town",
    "toy", "train", "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window",
    "zebra",
)

DIGITS_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CANONICAL = {"pascal": PASCAL_CLASSES, "voc2007": PASCAL_CLASSES, "coco": COCO_CLASSES, "nuswide": NUSWIDE_CLASSES,
             "digits": DIGITS_CLASSES}


def read_class_file(path: Path) -> list[str]:
    """One name per line; CUB's `attributes.txt` style "<id> <name>" lines lose their id."""
    names = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            first, _, rest = line.partition(" ")
            names.append(rest if first.isdigit() and rest else line)
    return names


def load_class_names(dataset: str, data_dir: Path, num_classes: int) -> list[str]:
    """Names for the `num_classes` label columns of `dataset` stored in `data_dir`."""
    candidates = [data_dir / "classes.txt", data_dir / "attributes.txt", data_dir / "CUB_200_2011" / "attributes.txt"]
    found = next((p for p in candidates if p.is_file()), None)
    names = read_class_file(found) if found else list(CANONICAL.get(dataset, ()))
    if len(names) != num_classes:
        source = found or f"the built-in {dataset} list"
        raise UserError(f"{source} names {len(names)} classes but the labels have {num_classes}; "
                        f"write one name per label column to {data_dir / 'classes.txt'}")
    return names
