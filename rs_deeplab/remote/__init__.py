"""Remote scenes: URLs and STAC Items resolved for GDAL, HTTP and S3 behaviour, reads that ride out hiccups."""
