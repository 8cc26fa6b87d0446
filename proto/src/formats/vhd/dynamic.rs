//! TODO(helper): dynamic header, BAT, locators, bitmaps.
