"""Alerts: how much a pair changed inside each watch zone, and telling someone when it is too much.

Every alert goes out as a Prefect event (``dsqnet.change.alert``, resource ``dsqnet.region.<region>.zone.<zone>``)
that automations can act on, and as a markdown artifact a person can read in the UI. A webhook URL
and a Prefect notification block are optional extra channels. Delivery problems on those extra
channels are logged and recorded, never fatal: the change is already in the history, and a failed
POST must not make the next run process the pair again.

Alerts are sent after the pair's polygons are in the history and before the state moves on, so a
crash in between sends them again on the rerun (at least once) rather than never.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import geopandas as gpd
import pandas as pd
from shapely.geometry.base import BaseGeometry

from flows.monitoring.config import Thresholds, slug

ALERT_EVENT = "dsqnet.change.alert"


@dataclass(frozen=True)
class ZoneChange:
    """A pair's change inside one watch zone."""

    zone: str
    area_m2: float
    polygons: int

    def crossed(self, thresholds: Thresholds) -> list[str]:
        """Which thresholds this change reaches: ``"area"``, ``"polygons"``, both or none."""
        reasons = []
        if thresholds.alert_area_m2 is not None and self.area_m2 >= thresholds.alert_area_m2:
            reasons.append("area")
        if thresholds.alert_polygons is not None and self.polygons >= thresholds.alert_polygons:
            reasons.append("polygons")
        return reasons


def zone_overlaps(polygons: gpd.GeoDataFrame, zones: dict[str, BaseGeometry]) -> pd.DataFrame:
    """Area (m²) of each change polygon inside each zone: one row per polygon, one column per zone.

    Zones are lon/lat; polygons may be in any CRS (a geographic one is measured in its UTM zone).
    """
    if not len(polygons) or polygons.crs is None:
        return pd.DataFrame(0.0, index=polygons.index, columns=list(zones))
    metric = polygons if not polygons.crs.is_geographic else polygons.to_crs(polygons.estimate_utm_crs())
    areas = {}
    for name, geometry in zones.items():
        zone = gpd.GeoSeries([geometry], crs="EPSG:4326").to_crs(metric.crs).iloc[0]
        areas[name] = metric.geometry.intersection(zone).area
    return pd.DataFrame(areas, index=polygons.index, columns=list(zones))


def zone_changes(overlaps: pd.DataFrame) -> list[ZoneChange]:
    """Per zone: the changed area inside it and how many polygons reach into it."""
    return [ZoneChange(str(zone), round(float(overlaps[zone].sum()), 3), int((overlaps[zone] > 0).sum()))
            for zone in overlaps.columns]


def zones_of_each_polygon(overlaps: pd.DataFrame) -> list[str]:
    """For the history: the zones each polygon reaches into, comma-separated ("" for none)."""
    return [",".join(str(z) for z in overlaps.columns if row[z] > 0) for _, row in overlaps.iterrows()]


@dataclass(frozen=True)
class Alert:
    region: str
    zone: str
    before: str
    after: str
    area_m2: float
    polygons: int
    crossed: tuple[str, ...]
    thresholds: dict
    run_folder: str
    history: str
    pair_key: str

    @property
    def resource_id(self) -> str:
        return f"dsqnet.region.{slug(self.region)}.zone.{slug(self.zone)}"

    @property
    def artifact_key(self) -> str:
        return f"alert-{slug(self.region)}-{slug(self.zone)}"

    def payload(self) -> dict:
        return {**asdict(self), "crossed": list(self.crossed)}

    def headline(self) -> str:
        return (f"{self.region} / {self.zone}: {self.area_m2:.0f} m² changed in {self.polygons} polygon(s) "
                f"between {self.before} and {self.after}")

    def markdown(self) -> str:
        limits = ", ".join(f"{k} {v}" for k, v in self.thresholds.items() if v is not None)
        return "\n".join([
            f"# Change alert: {self.region} / {self.zone}",
            "",
            f"- **pair:** {self.before} → {self.after}",
            f"- **changed area in the zone:** {self.area_m2:.1f} m²",
            f"- **change polygons in the zone:** {self.polygons}",
            f"- **crossed:** {', '.join(self.crossed)} (thresholds: {limits})",
            f"- **outputs:** `{self.run_folder}`",
            f"- **history:** `{self.history}` (rows with pair_key `{self.pair_key}`)",
        ])


def send_alert(alert: Alert, logger: logging.Logger | logging.LoggerAdapter, webhook_url: str | None = None,
               notify_block: str | None = None) -> dict:
    """Event + artifact always; webhook and notification block when given. Returns what was delivered where."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.events import emit_event

    event = emit_event(
        ALERT_EVENT,
        resource={"prefect.resource.id": alert.resource_id, "prefect.resource.name": f"{alert.region} / {alert.zone}",
                  "dsqnet.region": alert.region, "dsqnet.zone": alert.zone},
        related=[{"prefect.resource.id": f"dsqnet.region.{slug(alert.region)}", "prefect.resource.role": "region",
                  "prefect.resource.name": alert.region}],
        payload=alert.payload(),
    )
    create_markdown_artifact(alert.markdown(), key=alert.artifact_key, description=alert.headline())
    delivered = {"event": str(event.id) if event else None, "artifact": alert.artifact_key}
    if webhook_url:
        delivered["webhook"] = _post(webhook_url, alert, logger)
    if notify_block:
        delivered["notify_block"] = _notify(notify_block, alert, logger)
    logger.warning("ALERT %s", alert.headline())
    return delivered


def _post(url: str, alert: Alert, logger) -> str:
    import httpx

    try:
        response = httpx.post(url, json={"event": ALERT_EVENT, "text": alert.headline(), **alert.payload()},
                              timeout=10.0)
        response.raise_for_status()
        return f"sent ({response.status_code})"
    except httpx.HTTPError as err:
        logger.warning("alert webhook %s failed (%s: %s); the alert is still in the event and artifact",
                       url, type(err).__name__, err)
        return f"failed: {type(err).__name__}: {err}"


def _notify(name: str, alert: Alert, logger) -> str:
    from prefect.blocks.core import Block

    try:
        block = Block.load(name)
        block.notify(body=alert.markdown(), subject=f"dsqnet change alert: {alert.region} / {alert.zone}")
        return "sent"
    except Exception as err:  # noqa: BLE001 - a missing block, a bad token, an unreachable service: all non-fatal here
        logger.warning("notification block %s failed (%s: %s); the alert is still in the event and artifact",
                       name, type(err).__name__, err)
        return f"failed: {type(err).__name__}: {err}"
