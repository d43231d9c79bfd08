import pytest

from data_pipelines import formats


def test_parse_downloader_example():
  name = "@0549678.37@4180874.60@10@S@037.77386@-122.43590@pano@00@090@000@@@20200101_120000@day@.jpg"
  assert formats.parse_utm(name) == (549678.37, 4180874.60)


def test_parse_uses_basename_only():
  # an `@` in a directory must not shift the fields (the original splits the full path)
  path = "/data/my@folder/x@y/@0000012.50@0000100.25@@@@@@@@@@@@@.jpg"
  assert formats.parse_utm(path) == (12.5, 100.25)


def test_parse_negative_and_many():
  paths = ["a/@-000010.00@0000005.00@@@@@@@@@@@@@.jpg", "b/@0000003.00@-000004.50@@@@@@@@@@@@@.jpg"]
  utms = formats.parse_utms(paths)
  assert utms.tolist() == [[-10.0, 5.0], [3.0, -4.5]]


@pytest.mark.parametrize("bad", ["image.jpg", "x@1@2.jpg", "@abc@4180874.60@10@S@@@@@@@@@@@.jpg",
                                 "@1.0@@@.jpg"])
def test_malformed_names_name_the_file_and_pattern(bad):
  with pytest.raises(formats.FilenameFormatError) as err:
    formats.parse_utm("/some/dir/" + bad)
  assert bad in str(err.value)
  assert "@{utm_east}@{utm_north}" in str(err.value)


def test_format_name_matches_downloader_convention():
  name = formats.format_name(549678.37, 4180874.6, 10, "S", 37.77386, -122.4359, "pano", 0, 90,
                             0, "20200101_120000", "day")
  assert name == ("@0549678.37@4180874.60@10@S@037.77386@-122.43590@pano@00@090@000"
                  "@@@20200101_120000@day@.jpg")
  assert len(name.split("@")) == 16
  assert formats.parse_utm(name) == (549678.37, 4180874.6)


def test_format_name_rejects_separator_in_fields():
  with pytest.raises(ValueError, match="note"):
    formats.format_name(1, 2, note="a@b")
