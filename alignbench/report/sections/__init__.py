"""Report sections: every module here registers one or more sections with ``@register_section`` (see ``core``)."""
