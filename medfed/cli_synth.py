"""`medfed synth`: write synthetic multi-site data sets for demos and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Write synthetic multi-site data for demos and tests.", no_args_is_help=True)
console = Console()


@app.callback()
def synth() -> None:
    """Write synthetic multi-site data for demos and tests."""


@app.command("dicom")
def dicom(
    out: Annotated[Path, typer.Argument(help="Folder to write; each site becomes a subfolder (a data root).")],
    studies: Annotated[int, typer.Option(min=1, help="Studies per site, one CT series each.")] = 40,
    slices: Annotated[int, typer.Option(min=1, help="Slices per series.")] = 3,
    size: Annotated[int, typer.Option(min=16, max=512, help="Rows and columns per image, in pixels.")] = 64,
    sites: Annotated[int, typer.Option(min=1, max=3, help="Number of sites (site_a, site_b, site_c).")] = 3,
    lesion_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of studies with a lesion.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of images, labels and UIDs; equal seeds write equal files.")] = 0,
) -> None:
    """Write synthetic CT studies as DICOM, with labels and masks, for each site.

    Sites differ as hospitals do: vendor tags, pixel spacing, rescale
    intercept and slope, MONOCHROME1 at site_b and RLE Lossless at site_c.
    Check a site with the `synthetic_ct_lesion` DICOM contract.
    """
    from rich.progress import Progress

    from medfed.sites.dicom.synth import DEFAULT_SITES, SynthConfig, write_sites

    config = SynthConfig(
        studies_per_site=studies, slices=slices, size=size, lesion_fraction=lesion_fraction, seed=seed,
        sites=list(DEFAULT_SITES[:sites]),
    )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("writing studies", total=studies * sites)
        counts = write_sites(out, config, on_study=lambda _site, _study: progress.advance(task))
    for site, files in counts.items():
        console.print(f"{site}: {studies} studies, {files} DICOM files in {out / site}")
