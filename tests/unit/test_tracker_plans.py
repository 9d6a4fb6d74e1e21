"""Page plans give the bytes Jinja gives, for the acknowledgment pages and any values,
and refuse a template that does more with a text than show it."""

from __future__ import annotations

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker.pages import _WORDING
from tracker.plans import Plans

# Texts with markup, quotes, braces, ampersands, non-ASCII and private-use characters (the markers').
TEXT = st.text(alphabet=st.sampled_from(list("ab <>&\"'{}%é\ue000\ue0011\n")) | st.characters(), max_size=30)
MAYBE_TEXT = st.none() | TEXT


def environment(loader: jinja2.BaseLoader | None = None) -> jinja2.Environment:
    # As tracker.app.make_app sets it up.
    return jinja2.Environment(loader=loader or jinja2.PackageLoader("tracker", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, auto_reload=False)


ENV = environment()
PLANS = Plans(ENV)


def base(lang: str) -> dict:
    return {"lang": lang, "t": _WORDING[lang], "css_href": "/tracker/static/style.css"}


def jinja_page(template: str, lang: str, context: dict) -> str:
    return ENV.get_template(template).render({**base(lang), **context})


@settings(max_examples=1500, deadline=None)
@given(lang=st.sampled_from(["fr", "en"]), sender=TEXT, subject=MAYBE_TEXT, sent=TEXT, recipient=TEXT,
       target=st.booleans(), acknowledged=MAYBE_TEXT, form_key=TEXT)
def test_acknowledgment_page_is_jinjas(lang: str, **context) -> None:
    assert PLANS.render("ack.html", lang, base(lang), context) == jinja_page("ack.html", lang, context)


@settings(max_examples=1000, deadline=None)
@given(lang=st.sampled_from(["fr", "en"]), sender=TEXT, subject=MAYBE_TEXT, sent=TEXT, recipient=TEXT,
       target=st.booleans(), first=st.booleans(), acknowledged=TEXT)
def test_confirmation_page_is_jinjas(lang: str, **context) -> None:
    assert PLANS.render("done.html", lang, base(lang), context) == jinja_page("done.html", lang, context)


def test_a_subject_with_markup_is_shown_as_text() -> None:
    context = {"sender": "a@b.example", "subject": "<script>alert(1)</script>", "sent": "hier", "recipient": "c@d",
               "target": False, "acknowledged": None, "form_key": "k"}
    page = PLANS.render("ack.html", "fr", base("fr"), context)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page


@pytest.mark.parametrize("source", ["{{ x | upper }}", "{{ x | truncate(9) }}", "{{ x | length }}", "{{ x[:3] }}",
                                    "{{ x | trim }}-{{ x | wordcount }}"])
def test_a_template_computing_from_a_text_is_refused(source: str) -> None:
    plans = Plans(environment(jinja2.DictLoader({"page.html": source})))
    with pytest.raises(jinja2.TemplateError):
        plans.render("page.html", "fr", {}, {"x": "a text"})
