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
        ["push-gateway", None, "none", "none, file:DIR, kannel-sendsms:URL or kannel-pap:URL"],
        ["push-username", None, None, "gateway user (default $DMSERVER_PUSH_USERNAME)"],
        ["push-password", None, None, "gateway password (default $DMSERVER_PUSH_PASSWORD)"],
        ["push-rate", None, 1.0, "SMS per second", float],
        ["push-retry-window", None, 300.0, "seconds a phone has to answer the first push", float],
        ["push-backoff", None, 2.0, "factor applied to each later window", float],
        ["push-max", None, 3, "pushes per job at most", int],
        ["push-scan-interval", None, 10.0, "seconds between scans for jobs to push", float],
        ["push-notify-window", None, 1800.0, "seconds a session-less phone has to send its install notify", float],
    ]


@implementer(IServiceMaker, IPlugin)
class DmServerMaker:
    tapname = "dmserver"
    description = "OMA-DM FOTA server"
    options = Options

    def makeService(self, options):
        from dmserver import app
        from dmserver.push.service import PushConfig, parse_gateway_spec

        try:
            push = PushConfig(
                gateway=parse_gateway_spec(options["push-gateway"]),
                username=options["push-username"],
                password=options["push-password"],
                rate=options["push-rate"],
                retry_window=options["push-retry-window"],
                backoff=options["push-backoff"],
                max_pushes=options["push-max"],
                scan_interval=options["push-scan-interval"],
                notify_window=options["push-notify-window"],
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        data_dir = Path(options["data-dir"]) if options["data-dir"] else app.default_data_dir()
        config = app.ServerConfig(
            data_dir=data_dir,
            db_url=options["db"] or app.default_db_url(data_dir),
            host=options["host"],
            port=options["port"],
            base_url=options["base-url"],
            server_id=options["server-id"],
            push=push,
        )
        return app.make_service(config)


service_maker = DmServerMaker()
