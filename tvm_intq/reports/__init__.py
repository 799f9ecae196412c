"""Reports: the only place that formats results. Each module takes plain data (dicts, lists,
numbers) from the part that computed it and writes JSON, Markdown, PNG or a console table."""
