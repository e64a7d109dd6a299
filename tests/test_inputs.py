"""`dlearn.inputs`: what `--input` names, refused as a user error when the model cannot take it."""

import helpers
import pytest

from dlearn import errors, inputs


def test_inputs_of_the_other_kind_are_a_config_error(tmp_path):
  sequences = helpers.ts_file(tmp_path / 'cases.ts', ['1,2:3,4:a'])
  with pytest.raises(errors.ConfigError, match=r'a \.ts file, but the model classifies images'):
    inputs.open_inputs(sequences, None, helpers.IMAGES)
  with pytest.raises(ValueError, match=r'images, but the model classifies \.ts sequences'):
    inputs.open_inputs(str(tmp_path), None, helpers.SEQUENCES)
  with pytest.raises(FileNotFoundError, match='no such file or folder'):
    inputs.open_inputs(str(tmp_path / 'missing'), None, helpers.IMAGES)


def test_a_prepared_split_is_named_by_index():
  split = inputs.open_inputs(None, [{'image': 0, 'label': 1}, {'image': 2, 'label': 0}], None)
  assert len(split) == 2 and split.name(1) == '1' and split[1]['label'] == 0
  assert split.errors == {}
