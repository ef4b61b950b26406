from rdirdb.server.cli import main

raise SystemExit(main())
