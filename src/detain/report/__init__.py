"""What a run did, for people and machines: one schema (schema.json), several renderers.

`build.build_report` assembles the document from a Result and a static scan; `terminal`,
`sarif` and `html` render it; `events` turns channel records into checked events and is
imported by every backend, so this package's import stays cheap.
"""
