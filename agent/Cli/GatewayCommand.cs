using System.CommandLine;
using System.Net;
using System.Runtime.InteropServices;
using Weft.Gateway;

namespace Weft.Cli;

/// <summary><c>weft gateway</c>: flags only; the work is in <see cref="Weft.Gateway"/>.</summary>
internal static class GatewayCommand
{
    private static readonly Option<string> Inventory = new("--inventory") { HelpName = "FILE", Description = "Standalone: YAML of Services, EndpointSlices, Ingresses, Gateways, HTTPRoutes, ReferenceGrants and TLS Secrets; re-read when it changes. Without it: the Kubernetes API (in-cluster, --kubeconfig, or $KUBECONFIG)." };
    private static readonly Option<string> Kubeconfig = new("--kubeconfig") { HelpName = "FILE", Description = "Kubernetes mode with this kubeconfig (default: in-cluster service account, else $KUBECONFIG or ~/.kube/config)." };
    private static readonly Option<string[]> StatusAddress = new("--status-address") { HelpName = "IP|HOST", Description = "Kubernetes mode: the address written to Ingress status.loadBalancer and Gateway status.addresses (repeatable).", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string> PublishService = new("--publish-service") { HelpName = "NS/NAME", Description = "Kubernetes mode: publish this Service's load balancer addresses (or external IPs) in status, unless --status-address is given." };
    private static readonly Option<string> Http = new("--http") { HelpName = "ADDR|off", Description = "Plain HTTP/1.1 listener.", DefaultValueFactory = _ => "0.0.0.0:8080" };
    private static readonly Option<string> Https = new("--https") { HelpName = "ADDR|off", Description = "TLS listener: certificate by SNI, HTTP/2 or HTTP/1.1 by ALPN.", DefaultValueFactory = _ => "0.0.0.0:8443" };
    private static readonly Option<int> MaxConnections = new("--max-connections") { HelpName = "N", Description = "Client connections held at once; further ones are closed on accept.", DefaultValueFactory = _ => 10_000 };
    private static readonly Option<string> Admin = new("--admin") { HelpName = "ADDR|off", Description = "/metrics, /routes and /healthz.", DefaultValueFactory = _ => "127.0.0.1:15080" };

    public static Command Create()
    {
        var command = new Command("gateway", "Runs the ingress gateway: routes outside requests to Services by host and path, from Ingress (class weft) and Gateway API HTTPRoutes; no root, no eBPF (docs/gateway.md).")
        {
            Inventory, Kubeconfig, StatusAddress, PublishService, Http, Https, Admin, MaxConnections,
        };
        command.SetAction(async (cl, _) =>
        {
            var options = new GatewayOptions
            {
                Http = Endpoint(Http.Name, cl.GetRequiredValue(Http)),
                Https = Endpoint(Https.Name, cl.GetRequiredValue(Https)),
                Admin = Endpoint(Admin.Name, cl.GetRequiredValue(Admin)),
                MaxConnections = cl.GetValue(MaxConnections),
            };
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
            var inventory = cl.GetValue(Inventory);
            var publish = cl.GetValue(PublishService);
            if (inventory is not null && (cl.GetValue(Kubeconfig) is not null || publish is not null || cl.GetValue(StatusAddress) is { Length: > 0 }))
            {
                throw new UsageException("--inventory is the standalone mode; --kubeconfig, --status-address and --publish-service are for the Kubernetes mode");
            }

            if (publish is not null && publish.Split('/') is not [{ Length: > 0 }, { Length: > 0 }])
            {
                throw new UsageException($"--publish-service wants NAMESPACE/NAME, got '{publish}'");
            }

            using var file = inventory is null ? null : GatewayConfigSource.Start(inventory, metrics);
            using var cluster = inventory is not null ? null : GatewayKubernetesSource.Start(new Weft.Inventory.KubernetesApiOptions { Kubeconfig = cl.GetValue(Kubeconfig) }, metrics, new GatewayKubernetesOptions
            {
                Status = new GatewayStatusOptions { Addresses = cl.GetValue(StatusAddress) ?? [], PublishService = publish },
            });
            Func<RouteTable> routes = file is not null ? () => file.Current : () => cluster!.Current;
            Func<string?> error = file is not null ? () => file.LastError?.Message : () => cluster!.LastError;
            await using var server = await GatewayServer.StartAsync(options, routes, metrics, error);
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
        WeftCli.Examples(command, "weft gateway --inventory gateway.yaml", "weft gateway --inventory gateway.yaml --http 127.0.0.1:8080 --https off",
            "weft gateway --publish-service weft-system/weft-gateway", "weft gateway --kubeconfig ~/.kube/config --status-address 192.0.2.10");
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
