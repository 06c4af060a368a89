"""The stage plug-ins, one module each (registered in ``lifecycle.base.STAGES``)."""
