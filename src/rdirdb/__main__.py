from rdirdb.cli import main

raise SystemExit(main())
