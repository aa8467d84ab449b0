"""Bytes from elsewhere: unpacking zips safely, downloading Drive links and URLs."""
