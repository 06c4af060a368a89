"""Jinja2 templates of the study report: the HTML page (autoescaped) and the Markdown file
(every value escaped by the environment's ``finalize``)."""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trojanscope study report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:90em}
table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;font-size:.9em}
td{font-variant-numeric:tabular-nums}.note{color:#555;font-size:.9em}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}img{max-width:100%}
</style></head><body>
<h1>trojanscope study report</h1>
<table>{% for key, value in r.header %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
{% for s in r.sections %}
<h2>{{ loop.index }}. {{ s.title }}</h2>
{% for sentence in s.text %}<p>{{ sentence }}</p>
{% endfor %}
{% for t in s.tables %}<h3>{{ t.title }}</h3>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
<table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in t.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% endfor %}
{% for name in s.plots %}<figure><img alt="{{ r.captions[name] }}" \
src="data:image/png;base64,{{ png[name] }}"><figcaption>{{ r.captions[name] }}</figcaption></figure>
{% endfor %}
{% endfor %}
</body></html>
"""

MARKDOWN = """# trojanscope study report

| | |
| --- | --- |
{% for key, value in r.header %}| {{ key }} | {{ value }} |
{% endfor %}

{% for s in r.sections %}
## {{ loop.index }}. {{ s.title }}

{% for sentence in s.text %}{{ sentence }}

{% endfor %}
{% for t in s.tables %}
### {{ t.title }}

{% if t.note %}{{ t.note }}

{% endif %}
|{% for c in t.columns %} {{ c }} |{% endfor %}
|{% for c in t.columns %} --- |{% endfor %}
{% for row in t.rows %}|{% for cell in row %} {{ cell }} |{% endfor %}
{% endfor %}

{% endfor %}
{% for name in s.plots %}![{{ r.captions[name] }}]({{ name }})

{% endfor %}
{% endfor %}
"""
