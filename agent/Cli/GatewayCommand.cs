using System.CommandLine;
using System.Net;
using System.Runtime.InteropServices;
using Weft.Gateway;

namespace Weft.Cli;

/// <summary><c>weft gateway</c>: flags only; the work is in <see cref="Weft.Gateway"/>.</summary>
internal static class GatewayCommand
{
    private static readonly Option<string> Inventory = new("--inventory") { HelpName = "FILE", Description = "YAML of Services, EndpointSlices, Ingresses, Gateways, HTTPRoutes, ReferenceGrants and TLS Secrets; re-read when it changes.", Required = true };
    private static readonly Option<string> Http = new("--http") { HelpName = "ADDR|off", Description = "Plain HTTP/1.1 listener.", DefaultValueFactory = _ => "0.0.0.0:8080" };
    private static readonly Option<string> Https = new("--https") { HelpName = "ADDR|off", Description = "TLS listener: certificate by SNI, HTTP/2 or HTTP/1.1 by ALPN.", DefaultValueFactory = _ => "0.0.0.0:8443" };
    private static readonly Option<int> MaxConnections = new("--max-connections") { HelpName = "N", Description = "Client connections held at once; further ones are closed on accept.", DefaultValueFactory = _ => 10_000 };
    private static readonly Option<string> AccessLog = new("--access-log") { HelpName = "stdout|FILE|off", Description = "One JSON line per request: method, host, path, status, duration, upstream, route, traceparent.", DefaultValueFactory = _ => "off" };
    private static readonly Option<int> Eject5xx = new("--eject-after-5xx") { HelpName = "N", Description = "An endpoint that answers N 5xx in a row is ejected for --ejection-time; 0: never for 5xx.", DefaultValueFactory = _ => 5 };
    private static readonly Option<int> EjectionTime = new("--ejection-time") { HelpName = "SECONDS", Description = "How long an ejected endpoint (connection failure or 5xx) gets no request.", DefaultValueFactory = _ => 30 };
    private static readonly Option<string> Admin = new("--admin") { HelpName = "ADDR|off", Description = "/metrics, /routes and /healthz.", DefaultValueFactory = _ => "127.0.0.1:15080" };

    public static Command Create()
    {
        var command = new Command("gateway", "Runs the ingress gateway: routes outside requests to Services by host and path, from Ingress (class weft) and Gateway API HTTPRoutes; no root, no eBPF (docs/gateway.md).")
        {
            Inventory, Http, Https, Admin, MaxConnections, AccessLog, Eject5xx, EjectionTime,
        };
        command.SetAction(async (cl, _) =>
        {
            var options = new GatewayOptions
            {
                Http = Endpoint(Http.Name, cl.GetRequiredValue(Http)),
                Https = Endpoint(Https.Name, cl.GetRequiredValue(Https)),
                Admin = Endpoint(Admin.Name, cl.GetRequiredValue(Admin)),
                MaxConnections = cl.GetValue(MaxConnections),
                AccessLog = cl.GetRequiredValue(AccessLog) is var log && log != "off" ? log : null,
                Consecutive5xxToEject = cl.GetValue(Eject5xx),
                EjectionTime = TimeSpan.FromSeconds(cl.GetValue(EjectionTime)),
            };
            if (options.Consecutive5xxToEject < 0 || options.EjectionTime <= TimeSpan.Zero)
            {
                throw new UsageException("--eject-after-5xx must be 0 or more and --ejection-time at least 1");
            }

            if (options.MaxConnections < 1)
            {
                throw new UsageException("--max-connections must be at least 1");
            }

            if (options.Http is null && options.Https is null)
            {
                throw new UsageException("--http and --https cannot both be off");
            }

            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

            var metrics = new GatewayMetrics(Environment.GetEnvironmentVariable("POD_NAMESPACE") ?? "");
            using var config = GatewayConfigSource.Start(cl.GetRequiredValue(Inventory), metrics);
            await using var server = await GatewayServer.StartAsync(options, () => config.Current, metrics, () => config.LastError?.Message);
            Log.Info("gateway", "ready");
            await stop.Task;
            Log.Info("gateway", "stopping");
            return 0;

            void Stop(PosixSignalContext context)
            {
                context.Cancel = true;
                stop.TrySetResult();
            }
        });
        WeftCli.Examples(command, "weft gateway --inventory gateway.yaml", "weft gateway --inventory gateway.yaml --http 127.0.0.1:8080 --https off");
        return command;
    }

    private static IPEndPoint? Endpoint(string name, string value)
    {
        if (value == "off")
        {
            return null;
        }

        return IPEndPoint.TryParse(value, out var endpoint) && value.Contains(':')
            ? endpoint
            : throw new UsageException($"{name} wants ADDRESS:PORT or off, got '{value}'");
    }
}
