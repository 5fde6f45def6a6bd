"""The DCAT-AP 3.0.1 shapes as the tests load them (tests/vectors/dcat-ap, unmodified on disk).

``shacl_ranges.ttl`` links ``sh:property`` shapes that it defines nowhere (the upstream
defect tests/vectors/README.md describes): pyshacl refuses the whole shapes graph for
them. Only those dangling links are dropped, in memory; every shape that exists is kept.
"""

from __future__ import annotations

from pathlib import Path

from pyshacl import validate
from rdflib import RDF, Graph, Namespace, URIRef
from rdflib.term import Node

SH = Namespace("http://www.w3.org/ns/shacl#")
DCAT_AP = Path(__file__).resolve().parent.parent / "vectors" / "dcat-ap"


def drop_dangling_property_links(g: Graph) -> int:
    """Remove ``?s sh:property ?p`` where ``?p`` has no triple of its own; how many."""
    dangling = [
        (s, p)
        for s, p in g.subject_objects(SH.property)
        if isinstance(p, URIRef) and (p, None, None) not in g
    ]
    for s, p in dangling:
        g.remove((s, SH.property, p))
    return len(dangling)


def shapes(recommended: bool = True) -> tuple[Graph, int]:
    """(the mandatory + range shapes, and the recommended ones if asked; links dropped)."""
    g = Graph()
    g.parse(DCAT_AP / "shacl_dcat-ap-SHACL.ttl")
    ranges = Graph().parse(DCAT_AP / "shacl_ranges.ttl")
    dropped = drop_dangling_property_links(ranges)
    g += ranges
    if recommended:
        g += Graph().parse(DCAT_AP / "html_shacl_shapes_recommended.ttl")
    return g, dropped


def results(data: Graph, shapes_graph: Graph) -> list[tuple[Node, Node, Node, Node]]:
    """Every validation result: (severity, focus node, path, message)."""
    _, report, _ = validate(data, shacl_graph=shapes_graph, inference="none", allow_warnings=True)
    out = []
    for r in report.subjects(RDF.type, SH.ValidationResult):
        out.append(
            (
                report.value(r, SH.resultSeverity),
                report.value(r, SH.focusNode),
                report.value(r, SH.resultPath),
                report.value(r, SH.resultMessage),
            )
        )
    return out
