"""twistd plugin: ``twistd -n dmserver --port 8700`` runs the same server as
``dmserver serve``. Twisted finds this module through the twisted/plugins
directory of every sys.path entry, which the editable install provides."""

from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["data-dir", None, None, "data directory (default $DMSERVER_DATA_DIR or ./data)"],
        ["db", None, None, "SQLAlchemy database URL (default SQLite in the data directory)"],
        ["host", None, "127.0.0.1", "address to listen on"],
        ["port", None, 8700, "TCP port", int],
        ["base-url", None, None, "public URL used in RespURI and download URLs"],
        ["server-id", None, "dmserver", "server id in the devices' DM accounts"],
    ]


@implementer(IServiceMaker, IPlugin)
class DmServerMaker:
    tapname = "dmserver"
    description = "OMA-DM FOTA server"
    options = Options

    def makeService(self, options):
        from dmserver import app

        data_dir = Path(options["data-dir"]) if options["data-dir"] else app.default_data_dir()
        config = app.ServerConfig(
            data_dir=data_dir,
            db_url=options["db"] or app.default_db_url(data_dir),
            host=options["host"],
            port=options["port"],
            base_url=options["base-url"],
            server_id=options["server-id"],
        )
        return app.make_service(config)


service_maker = DmServerMaker()
