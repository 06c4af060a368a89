import shutil

import pytest

from trojanscope.database.catalog import Catalog
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Quantity
from trojanscope.workflows.defects import CleanSpec, build_defect, ensure_clean_model, get_defect


@pytest.fixture(scope="session")
def template(tmp_path_factory):
    """A catalog with one clean digits model and one narrow BadNets defect, built once."""
    catalog = Catalog.open(tmp_path_factory.mktemp("template") / "db", create=True)
    clean, model, splits = ensure_clean_model(catalog, CleanSpec("digits", "cnn-small"))
    config = InjectionConfig(quantity=Quantity(level="narrow"))
    defect, created = build_defect(catalog, clean, model, splits, "badnets", {}, config, 0)
    assert created
    return catalog.root, clean.id, defect.id, config


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    return Catalog.open(tmp_path / "db", create=True)


@pytest.fixture
def built(template, tmp_path):
    """A private copy of the template: (catalog, clean row, model, splits, defect, config)."""
    root, _, defect_id, config = template
    shutil.copytree(root, tmp_path / "db")
    catalog = Catalog.open(tmp_path / "db")
    clean, model, splits = ensure_clean_model(catalog, CleanSpec("digits", "cnn-small"))
    return catalog, clean, model, splits, get_defect(catalog, defect_id), config
