import sys

from image2song.cli import main

sys.exit(main())
