"""A roadmap as one Markdown document: curriculum, tutorials, resources and quizzes, to keep."""

from __future__ import annotations

from typing import Any

from roadmap_app.api.schemas import RoadmapOut

__all__ = ("roadmap_markdown",)


def _line(text: str) -> str:
    # Titles are model output on one line: a newline would start a new Markdown block.
    return " ".join(str(text).split())


def roadmap_markdown(roadmap: RoadmapOut) -> str:
    """The roadmap as Markdown; tutorials are included as the model wrote them (Markdown too)."""
    out: list[str] = [f"# {_line(roadmap.title or roadmap.goal)}", ""]
    out += [
        f"Goal: {_line(roadmap.goal)} · {roadmap.level} · {roadmap.weekly_hours} h/week · "
        f"curriculum version {roadmap.curriculum_version} · {roadmap.status} "
        f"({roadmap.progress.done}/{roadmap.progress.total} concepts written)",
        "",
    ]
    if roadmap.summary:
        out += [roadmap.summary.strip(), ""]
    for stage in roadmap.stages:
        out += [f"## Stage {stage.position}: {_line(stage.title)}", ""]
        if stage.description:
            out += [stage.description.strip(), ""]
        for module in stage.modules:
            out += [f"### {_line(module.title)}", ""]
            for concept in module.concepts:
                out += [f"#### {_line(concept.title)} ({concept.estimated_hours:g} h)", ""]
                if concept.content is None:
                    out += ["_Not written yet._", ""]
                    continue
                # Headings inside the tutorial move below the concept's own level.
                tutorial = "\n".join(
                    "####" + line if line.startswith("#") else line
                    for line in concept.content.tutorial.strip().splitlines()
                )
                out += [tutorial, ""]
                out += _resources(concept.content.resources)
                out += _quiz(concept.content.quiz)
    return "\n".join(out).rstrip() + "\n"


def _resources(resources: list[dict[str, Any]]) -> list[str]:
    if not resources:
        return []
    lines = ["**Resources**", ""]
    lines += [f"- [{_line(r.get('title', ''))}]({r.get('url', '')}) ({r.get('kind', '')})"
              for r in resources]  # fmt: skip
    return [*lines, ""]


def _quiz(quiz: list[dict[str, Any]]) -> list[str]:
    if not quiz:
        return []
    lines = ["**Quiz**", ""]
    for number, question in enumerate(quiz, start=1):
        lines.append(f"{number}. {_line(question.get('question', ''))}")
        options = question.get("options", [])
        answer = question.get("answer")
        for index, option in enumerate(options):
            mark = " ✓" if index == answer else ""
            lines.append(f"   - {_line(option)}{mark}")
    return [*lines, ""]
