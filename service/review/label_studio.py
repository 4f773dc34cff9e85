"""The review queue to Label Studio and its annotations back: `attrx review export --format label-studio`
and `attrx review import`.

Export writes, into a folder:
- `tasks.json`: one task per queue product, `data` = {attrx_id, title, image, attrx (its answers)},
  with attrx's answers also as a prediction (one `choices` result per attribute under review, its confidence as `score`;
  `model_version` = "<bundle name> <bundle version>");
- `label_config.xml`: the labelling configuration: the image, the title, and one single-choice
  question per attribute with the bundle's values (less the folded class), in the bundle's order.

Images: an image that is already a URL stays one. A local file is given as Label Studio's
local-files URL (`/data/local-files/?d=<path under the document root>`): Label Studio serves it
when started with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>, and the project has a local-files storage for the
images' folder (a folder under the root, not the root itself), so the images never leave the
machine and need no web server (`--image-url-prefix URL` instead prefixes their path under the root, for images
published on a web server or a bucket).

Import reads Label Studio's JSON export (the list of tasks with their `annotations`) and stores each
task's latest annotation that was not cancelled as a decision in attrx's decisions store, the one
`attrx review` writes and `attrx improve` learns from: the value chosen, "accept" where it is
attrx's own answer (from the task's attrx prediction) and "correct" where not, by the annotator
(their email where the export has it; Label Studio's JSON export gives the user's number, so
`label-studio:<user id>`), at the annotation's time.
Names come from Label Studio, not attrx's keys: they are stored as unverified. Importing the same
export again adds nothing; a later annotation of a product already answered is stored as a revision.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from attrx.service.review.queue_reader import QueueItem
from attrx.service.review.store import Answer, AnsweredError, DecisionStore, LeaseError

LOCAL_FILES = "/data/local-files/?d="


def labelling_config(values: dict[str, list[str]]) -> str:
    """Label Studio's XML: the image, the title and one single-choice question per attribute."""
    lines = ["<View>", '  <Image name="image" value="$image" maxWidth="480px"/>', '  <Text name="title" value="$title"/>']
    for attr, vals in values.items():
        lines += [f"  <Header value={quoteattr(attr)}/>",
                  f'  <Choices name={quoteattr(attr)} toName="image" choice="single" showInline="true">']
        lines += [f"    <Choice value={quoteattr(v)}/>" for v in vals]
        lines.append("  </Choices>")
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def image_ref(image: str | None, root: Path | None, url_prefix: str | None) -> str:
    if not image:
        return ""
    if "://" in image:
        return image
    path = Path(image).resolve()
    if root is None:
        raise ValueError(f"image {image}: a local file needs --document-root (Label Studio's local-files root)")
    try:
        rel = path.relative_to(root.resolve())
    except ValueError:
        raise ValueError(f"image {image} is not under the document root {root}") from None
    if url_prefix:
        return url_prefix.rstrip("/") + "/" + quote(rel.as_posix())
    return LOCAL_FILES + quote(rel.as_posix(), safe="/")


def task_of(item: QueueItem, model_version: str, values: dict[str, list[str]], root: Path | None,
            url_prefix: str | None) -> dict:
    result = [{"from_name": a, "to_name": "image", "type": "choices", "value": {"choices": [att["value"]]},
               "score": att.get("confidence")}
              for a, att in item.attributes.items() if a in values and att.get("value") in values[a]]
    scores = [r["score"] for r in result if r["score"] is not None]
    answers = {r["from_name"]: {"value": r["value"]["choices"][0], "confidence": r["score"]} for r in result}
    return {"data": {"attrx_id": item.id, "title": item.title or "", "image": image_ref(item.image, root, url_prefix),
                     "attrx": answers},
            "predictions": [{"model_version": model_version, "score": sum(scores) / len(scores) if scores else None,
                             "result": result}]}


def export_tasks(items: list[QueueItem], manifest, out: str | Path, *, document_root: str | None = None,
                 url_prefix: str | None = None) -> dict:
    """Write tasks.json and label_config.xml into the folder `out`; returns a summary."""
    values = {a.name: [c for c in a.classes if c != a.folded_class] for a in manifest.attributes}
    version = f"{manifest.name} {manifest.version}"
    root = Path(document_root) if document_root else None
    tasks = [task_of(it, version, values, root, url_prefix) for it in items]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tasks.json").write_text(json.dumps(tasks, indent=1))
    (folder / "label_config.xml").write_text(labelling_config(values))
    return {"tasks": len(tasks), "out": str(folder), "model_version": version,
            "images": "url" if url_prefix else "local-files"}


def _annotator(a: dict) -> str:
    who = a.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or f"label-studio:{who.get('id')}")
    return str(a.get("created_username") or "").split(",")[0].strip() or f"label-studio:{who}"


def _latest(task: dict) -> dict | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and a.get("result")]
    return max(done, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", str(a.get("id")))) \
        if done else None


def _utc(ts: str | None) -> str | None:
    """Label Studio's '2026-12-07T10:00:01.123456Z' as attrx stores times ('2026-12-07T10:00:01Z')."""
    return ts[:19] + "Z" if ts and len(ts) >= 19 else None


def answers_of(task: dict, annotation: dict) -> list[Answer]:
    """The annotation's choices as decisions; attrx's own answer from the task's data (`attrx`), which
    Label Studio exports as imported (its export lists predictions by id only)."""
    attrx = (task.get("data") or {}).get("attrx") or {}
    model = {a: v.get("value") for a, v in attrx.items() if isinstance(v, dict)}
    score = {a: v.get("confidence") for a, v in attrx.items() if isinstance(v, dict)}
    out = []
    for r in annotation["result"]:
        if r.get("type") != "choices" or not r.get("value", {}).get("choices"):
            continue
        attr, value = r["from_name"], r["value"]["choices"][0]
        out.append(Answer(attr, "accept" if model.get(attr) == value else "correct", value, model.get(attr),
                          score.get(attr)))
    return out


def import_annotations(export: str | Path, store: DecisionStore) -> dict:
    """Store Label Studio's annotations as decisions (see the module docstring); returns counts."""
    tasks = json.loads(Path(export).read_text())
    if not isinstance(tasks, list):
        raise ValueError(f"{export}: not Label Studio's JSON export (a list of tasks)")
    counts = {"tasks": len(tasks), "answered": 0, "revised": 0, "already": 0, "without_annotation": 0, "leased": 0}
    for task in tasks:
        pid = (task.get("data") or {}).get("attrx_id")
        ann = _latest(task)
        answers = answers_of(task, ann) if ann and pid else []
        if not answers:
            counts["without_annotation"] += 1
            continue
        who, at = _annotator(ann), _utc(ann.get("updated_at") or ann.get("created_at"))
        if any(h["reviewer"] == who and h["decided_at"] == at for h in store.history(pid)):
            counts["already"] += 1
            continue
        counts[_record(store, pid, who, answers, task["data"], at)] += 1
    return counts


def _record(store: DecisionStore, pid: str, who: str, answers: list[Answer], data: dict, at: str | None) -> str:
    """Stored as an answer, or as a revision of one; "leased": someone holds it in attrx review now
    (import again later)."""
    try:
        store.record(pid, who, answers, data.get("title"), data.get("image"), verified=False, at=at)
        return "answered"
    except AnsweredError:
        store.record(pid, who, answers, data.get("title"), data.get("image"), verified=False, at=at, revision=True)
        return "revised"
    except LeaseError:
        return "leased"
