"""Page plans: a template rendered once with holes, then filled for each request.

Every fetch of an acknowledgment link renders the same page around a handful of
texts (sender, subject, recipient, times, the form's value). Jinja spent about
30 us a page on contexts, template look-ups, blocks and escaping the constant
wording. A plan is the page rendered once per language and shape, with a marker in
place of each text, and cut at the markers: a page is then the plan's parts
joined with the texts, escaped as Jinja's autoescaping escapes them.

The contract of a planned template: it uses each text (``str``) value only by
showing it (autoescaped, also inside ``wording.format(...)``) or by testing its
truthiness; every other value (flags: booleans, None, numbers) is part of the
plan's key, and so is whether each text is empty. When a plan is made the page is
rendered with two different sets of markers, and both must cut it into the same
parts: a filter or anything computed from a text shows up as different parts and
raises jinja2.TemplateError. Tests compare planned pages with Jinja's on many values.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import escape

MAX_PLANS = 256  # a few pages x languages x shapes; past that, pages render without keeping a plan

# Private-use code points: escaping leaves them alone and no wording holds them. The second
# set is long, mixed-case and spaced, so that a filter (upper, truncate, trim, ...) alters it.
_MARKER_TAILS = ("\ue001", "\ue002Xy z;" * 8 + "\ue001")


@dataclass(frozen=True)
class Plan:
    """A page cut at its holes: ``parts`` (escaped page text) has one more item than ``holes``."""

    parts: tuple[str, ...]
    holes: tuple[str, ...]  # the context key whose value, escaped, fills each hole

    def fill(self, context: Mapping[str, Any]) -> str:
        out = [*self.parts, *self.holes]
        out[0::2] = self.parts
        out[1::2] = [escape(context[name]) for name in self.holes]
        return "".join(out)


class Plans:
    """The plans of one Jinja environment's templates, made on first use."""

    def __init__(self, env: jinja2.Environment) -> None:
        self._env = env
        self._plans: dict[Hashable, Plan] = {}

    def render(self, template: str, variant: Hashable, base: Mapping[str, Any], context: Mapping[str, Any]) -> str:
        """The page Jinja renders from ``{**base, **context}``.

        ``base`` holds what is the same for every page of one ``variant`` (e.g. the language
        and its wording); ``context`` is the request's values, under the contract above.
        """
        # The context's names, then each value: a flag as it is, a text as whether it is empty
        # (a list comprehension: a generator of (name, value) pairs cost as much as the filling).
        shape = tuple([bool(v) if isinstance(v, str) else v for v in context.values()])
        key = (template, variant, tuple(context), shape)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make(template, base, context)
            if len(self._plans) < MAX_PLANS:
                self._plans[key] = plan
        return plan.fill(context)

    def _make(self, template: str, base: Mapping[str, Any], context: Mapping[str, Any]) -> Plan:
        texts = [k for k, v in context.items() if isinstance(v, str) and v]
        cuts = []
        for tail in _MARKER_TAILS:
            markers = {k: f"\ue000{n}{tail}" for n, k in enumerate(texts)}
            page = self._env.get_template(template).render({**base, **context, **markers})
            # With the capturing group, split alternates page text and hole numbers.
            pieces = re.split(f"\ue000([0-9]+){re.escape(tail)}", page)
            cuts.append(Plan(tuple(pieces[0::2]), tuple(texts[int(n)] for n in pieces[1::2])))
        if cuts[0] != cuts[1]:
            raise jinja2.TemplateError(f"{template} does more with its text values than show them; render it with Jinja")
        return cuts[0]
