"""A small research site to try the research loop without patients: synthetic studies received through the
gateway's ingest path, analysed by the service's engine, reviewed by a simulated radiologist, exported.

The notebooks use it when no snapshot is given (``TINY=1``, CI) and the tests use its pieces. Nothing
here is a shortcut around the service: studies enter through ``dicom_gateway.ingest.Ingestor`` and
``dicom_gateway.assembly``, are analysed by ``tamsoat.tasks.analyze_study`` with the real model, decided
and signed with ``review.decisions`` and exported with ``tamsoat.research``. Only the radiologist is
simulated: an AI finding on a true phantom nodule is accepted (the first one corrected to the true size
and type), any other AI finding is rejected, and every nodule the AI missed is added.
"""

from __future__ import annotations

import getpass
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select

from dicom_gateway.assembly import close_quiet_studies, record_instance
from dicom_gateway.ingest import Ingestor, Origin, StoredInstance
from dicom_gateway.spool import Spool
from review import decisions
from review.decisions import Actor
from tamsoat.core.db import Database, migrate
from tamsoat.core.domain import Decision, Role, StudyState
from tamsoat.core.settings import REPO_ROOT, Settings, load_settings
from tamsoat.core.tables import Study, User
from tamsoat.core.users import add_user
from tamsoat.tasks import TaskContext, analyze_study, on_study_closed
from training.phantom import NODULE_KINDS, PhantomNodule, make_phantom
from training.series import write_ct_series

DEMO_SHAPE = (40, 128, 128)  # slices, rows, columns: 100 x 240 x 240 mm
DEMO_SPACING = (1.875, 1.875, 2.5)  # i, j, k mm
SHIPPED_MODELS = REPO_ROOT / "models"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Identity:
    """What a study says about its patient and its making (all of it is removed or replaced on export)."""

    patient_name: str
    patient_id: str
    birth_date: str = ""
    study_date: str = ""  # YYYYMMDD; default: today
    institution: str = ""
    study_description: str = "CT CHEST LOW DOSE"
    series_description: str = "AXIAL 2.5"
    image_comments: str = ""
    accession: str = ""
    referring: str = ""
    operators: str = ""
    other_ids: str = ""
    address: str = ""
    private_text: str = ""


def stamp_identity(paths: Sequence[Path], ident: Identity) -> None:
    """Write ``ident`` into every file of a series (UTF-8, so names may be Vietnamese)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = ident.patient_name
        ds.PatientID = ident.patient_id
        ds.PatientBirthDate = ident.birth_date
        if ident.study_date:
            for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
                setattr(ds, kw, ident.study_date)
        ds.StudyDescription = ident.study_description
        ds.SeriesDescription = ident.series_description
        for kw, value in (("InstitutionName", ident.institution), ("ImageComments", ident.image_comments),
                          ("AccessionNumber", ident.accession), ("ReferringPhysicianName", ident.referring),
                          ("OperatorsName", ident.operators), ("OtherPatientIDs", ident.other_ids),
                          ("PatientAddress", ident.address)):
            if value:
                setattr(ds, kw, value)
        if ident.private_text:
            block = ds.private_block(0x0011, "TAMSOAT DEMO", create=True)
            block.add_new(0x01, "LO", ident.private_text)
        ds.save_as(path, enforce_file_format=True)


def write_study(out_dir: Path, ident: Identity, *, seed: int, diameters: Sequence[float] = (12.0, 9.0, 7.0, 5.0),
                kinds: Sequence[str] | None = None, shape: tuple[int, int, int] = DEMO_SHAPE,
                spacing: tuple[float, float, float] = DEMO_SPACING) -> tuple[list[Path], tuple[PhantomNodule, ...]]:
    """A synthetic chest CT series with nodules, written as DICOM with ``ident``; the files and the truth."""
    kinds = list(kinds) if kinds else [NODULE_KINDS[n % 3] for n in range(len(diameters))]
    count = len(diameters)
    while True:
        try:
            phantom = make_phantom(seed, shape, spacing, count, list(diameters[:count]), nodule_kinds=kinds[:count])
            break
        except RuntimeError:  # the nodules did not fit: fewer
            count -= 1
            if count == 0:
                raise
    # The identity goes in afterwards, in UTF-8 (the series writer uses Latin-1).
    paths = write_ct_series(phantom, out_dir, patient_name="PENDING^IDENTITY", patient_id=ident.patient_id,
                            study_description="PENDING", seed=seed)
    stamp_identity(paths, ident)
    return paths, phantom.nodules


def _dataset_bytes(path: Path) -> tuple[bytes, str]:
    """The data set as a peer sends it (bytes after the File Meta Information) and its transfer syntax."""
    data = path.read_bytes()
    meta_len = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR little endian
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return data[144 + meta_len:], str(ds.file_meta.TransferSyntaxUID)


def receive(db: Database, spool_root: Path, paths: Sequence[Path], *, calling_ae: str = "MODALITY",
            called_ae: str = "TAMSOAT") -> str:
    """Store files through the gateway's ingest path (as a C-STORE would); returns the Study Instance UID."""
    def sink(stored: StoredInstance) -> None:
        with db.engine.begin() as conn:
            record_instance(conn, stored)

    ingestor = Ingestor(Spool(spool_root, fsync=False), sink)
    study = ""
    for path in paths:
        encoded, syntax = _dataset_bytes(path)
        study = ingestor.ingest((encoded,), syntax, Origin(calling_ae, called_ae, "127.0.0.1")).study_instance_uid
    return study


def close_received(db: Database) -> list[str]:
    """Close every receiving study now (as the sweeper does after the quiet period) and queue its analysis."""
    with db.session() as s:
        return close_quiet_studies(s, 0.0, on_study_closed, now=datetime.now(UTC) + timedelta(seconds=1))


def _nodule_type(kind: str) -> str:
    return kind.replace("-", "_")


def simulate_review(db: Database, study_uid: str, truth: Sequence[PhantomNodule], *, reader: str,
                    correct_first: bool = True, sign: bool = True) -> dict[str, int]:
    """Decide every finding of a ready study as a radiologist who knows the truth would, then sign."""
    actor = Actor(reader, "research-demo")
    done = {"accepted": 0, "edited": 0, "rejected": 0, "added": 0}
    with db.session() as s:
        study = decisions.get_study(s, study_uid)
        analysis = decisions.current_analysis(s, study_uid)
        if analysis is None or study.state != StudyState.READY.value:
            raise ValueError(f"study {study_uid} is not ready for review ({study.state})")
        found: set[int] = set()
        for f in [f for f in analysis.findings if f.source == "ai"]:
            centre = (f.center_x_mm, f.center_y_mm, f.center_z_mm)
            hit = next((n for n, t in enumerate(truth)
                        if math.dist(centre, t.center_mm) <= max(t.diameter_mm / 2.0, 2.5)), None)
            if hit is None:
                decisions.decide(s, study, f.id, Decision.REJECT, actor, reason="vessel", auto_claim=True)
                done["rejected"] += 1
            elif correct_first and not done["edited"]:
                t = truth[hit]
                decisions.edit(s, study, f.id, actor, center_mm=t.center_mm, diameter_mm=round(t.diameter_mm, 1),
                               nodule_type=_nodule_type(t.kind), auto_claim=True)
                done["edited"] += 1
                found.add(hit)
            else:
                decisions.decide(s, study, f.id, Decision.ACCEPT, actor, auto_claim=True)
                done["accepted"] += 1
                found.add(hit)
        for n, t in enumerate(truth):
            if n not in found:
                decisions.add(s, study, actor, center_mm=t.center_mm, diameter_mm=round(t.diameter_mm, 1),
                              nodule_type=_nodule_type(t.kind), auto_claim=True)
                done["added"] += 1
        if sign:
            decisions.sign(s, study, actor)
    return done


@dataclass
class Site:
    """A research site: its settings, database and the user who acts (``cli:<user>`` in the audit)."""

    settings: Settings
    db: Database
    user: str

    @property
    def actor(self) -> str:
        return f"notebook:{self.user}"


def demo_site(workdir: Path) -> Site:
    """The demo installation under ``workdir/site`` (made on first use): its own database, spool, and a copy
    of the shipped models (so registering a version never touches the repository)."""
    home = Path(workdir) / "site"
    models = home / "models"
    if not models.exists():
        shutil.copytree(SHIPPED_MODELS, models, ignore=shutil.ignore_patterns(".*"))
    settings = Settings(home=home, models_dir=models, institution="tamsoat research demo", inference_threads=2)
    migrate(settings.db_url)
    db = Database(settings.db_url)
    with db.session() as s:
        for name, role in (("radiologist", Role.RADIOLOGIST), ("researcher", Role.RESEARCHER), ("admin", Role.ADMIN)):
            if s.scalar(select(User).where(User.name == name)) is None:
                add_user(s, name, role)
    return Site(settings, db, "researcher")


def research_site(workdir: Path, *, tiny: bool) -> Site:
    """Where the notebooks register versions: the demo site with ``tiny``, else this installation (settings
    from ``TAMSOAT_CONFIG`` / ``TAMSOAT_HOME``, the user ``TAMSOAT_USER`` or the login name)."""
    if tiny:
        return demo_site(workdir)
    config = os.environ.get("TAMSOAT_CONFIG")
    settings = load_settings(Path(config) if config else None)
    migrate(settings.db_url)
    return Site(settings, Database(settings.db_url), os.environ.get("TAMSOAT_USER") or getpass.getuser())


DEMO_PATIENTS = (  # patient, seed, days before today: patient 1 has two studies (longitudinal dates)
    (Identity("DEMO^AN", "DEMO-0001", birth_date="19600101", institution="Demo Hospital"), 41, 400),
    (Identity("DEMO^AN", "DEMO-0001", birth_date="19600101", institution="Demo Hospital"), 42, 35),
    (Identity("DEMO^BINH", "DEMO-0002", birth_date="19550505", institution="Demo Hospital"), 43, 20),
    (Identity("DEMO^CHI", "DEMO-0003", birth_date="19700707", institution="Demo Hospital"), 44, 10),
)


def add_reviewed_studies(site: Site, count: int, *, log: Log = print, start: int = 0) -> list[str]:
    """Receive, analyse (real model), review (simulated) and sign ``count`` demo studies."""
    ctx = TaskContext(settings=site.settings, db=site.db)
    uids = []
    for n in range(start, start + count):
        ident, seed, days = DEMO_PATIENTS[n % len(DEMO_PATIENTS)]
        seed += 100 * (n // len(DEMO_PATIENTS))
        when = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y%m%d")
        ident = Identity(**{**ident.__dict__, "study_date": when})
        folder = site.settings.home / "incoming" / f"study-{n}"
        paths, truth = write_study(folder, ident, seed=seed)
        uid = receive(site.db, site.settings.spool_path, paths)
        shutil.rmtree(folder)
        close_received(site.db)
        analyze_study(ctx, uid, {})
        done = simulate_review(site.db, uid, truth, reader="radiologist")
        log(f"study {n + 1}: {len(truth)} nodules; radiologist {done}")
        uids.append(uid)
    return uids


def build_demo_snapshot(workdir: Path, *, studies: int = 3, log: Log = print) -> Path:
    """A demo site with ``studies`` reviewed studies, exported as a snapshot under ``workdir/snapshots``."""
    from tamsoat.research import export_dataset

    site = demo_site(workdir)
    with site.db.session() as s:
        signed = len(s.scalars(select(Study.study_instance_uid).where(Study.state == StudyState.SIGNED.value)).all())
    if signed < studies:
        add_reviewed_studies(site, studies - signed, log=log, start=signed)
    summary = export_dataset(site.db, site.settings, f"cli:{site.user}", Path(workdir) / "snapshots")
    log(f"exported {summary.snapshot_id}: {summary.counts['cases']} cases")
    return summary.path


def find_snapshot(workdir: Path, snapshot: str | Path | None = None, *, tiny: bool = True, studies: int = 3,
                  log: Log = print) -> Path:
    """The snapshot to work on: ``snapshot`` when given, else the newest under ``workdir/snapshots``, else
    (``tiny``) a freshly built demo snapshot."""
    if snapshot:
        return Path(snapshot)
    folder = Path(workdir) / "snapshots"
    existing = sorted((p for p in folder.glob("*") if (p / "manifest.json").is_file()),
                      key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if existing:
        return existing[-1]
    if not tiny:
        raise FileNotFoundError("no snapshot: set TAMSOAT_SNAPSHOT (export one with `tamsoat dataset export`)")
    return build_demo_snapshot(workdir, studies=studies, log=log)


def notebook_parameters(**defaults: Any) -> dict[str, Any]:
    """Notebook parameters from the environment (``TAMSOAT_<NAME>``), for papermill-free runs: TINY=1 etc."""
    out = dict(defaults)
    for name, default in defaults.items():
        raw = os.environ.get(f"TAMSOAT_{name.upper()}")
        if raw is None:
            continue
        out[name] = raw.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(raw) if (
            default is not None) else raw
    return out


def register_candidate(site: Site, candidate: Path, version: str | None = None) -> Any:
    """Register a candidate model folder at ``site`` as a version (default: the next minor one) after checking
    that the site's user may (researcher or admin); the version in use stays active until promoted."""
    import yaml

    from inference.registry import Registry
    from tamsoat.deployments import register_version
    from tamsoat.research import EXPORT_ROLES, check_user
    from training.register import next_minor

    with site.db.session() as s:
        check_user(s, site.user, EXPORT_ROLES)
    model_id = str(yaml.safe_load((Path(candidate) / "manifest.yaml").read_text())["id"])
    registry = Registry(site.settings.models_dir)
    version = version or next_minor(registry.versions(model_id) if model_id in registry.model_ids() else [])
    return register_version(site.db, site.settings, Path(candidate), version, site.actor, model_id=model_id)
