using System.Globalization;
using System.Net;
using System.Text.Json;
using Weft.Inventory;
using Weft.Policy.Internal;
using Weft.Telemetry;

namespace Weft.Admin;

/// <summary>
/// The node's admin API on loopback, read by the <c>weft</c> CLI:
/// <code>
///   /flows?pod=&amp;from_pod=&amp;to_pod=&amp;namespace=&amp;verdict=&amp;since_ms=&amp;last=   live and recently finished connections
///   /config_dump                     workloads, services, policies, certificates (no keys), enrolled pods
///   /workloads /services /policies /certs   one section each
///   /ready
/// </code>
/// </summary>
internal sealed class AdminServer : HttpEndpoint
{
    private readonly IAgentView _agent;

    public AdminServer(string address, IAgentView agent)
        : base($"http://{address}/", "admin")
    {
        _agent = agent;
    }

    protected override Task ServeAsync(HttpListenerContext context)
    {
        Serve(context);
        return Task.CompletedTask;
    }

    private void Serve(HttpListenerContext context)
    {
        var path = context.Request.Url?.AbsolutePath ?? "/";
        var response = context.Response;
        response.ContentType = "application/json";
        using var body = new MemoryStream();
        using (var w = new Utf8JsonWriter(body, new JsonWriterOptions { Indented = true }))
        {
            switch (path)
            {
                case "/flows":
                    FlowFilter filter;
                    try
                    {
                        filter = FlowFilter.FromQuery(context.Request.QueryString);
                    }
                    catch (FormatException e)
                    {
                        response.StatusCode = 400;
                        WriteError(w, e.Message);
                        break;
                    }

                    WriteFlows(w, _agent.Flows, filter);
                    break;
                case "/config_dump":
                    WriteConfig(w);
                    break;
                case "/workloads":
                    w.WriteStartObject();
                    WriteWorkloads(w, _agent.Inventory);
                    w.WriteEndObject();
                    break;
                case "/services":
                    w.WriteStartObject();
                    WriteServices(w, _agent.Inventory);
                    w.WriteEndObject();
                    break;
                case "/policies":
                    w.WriteStartObject();
                    WritePolicies(w, _agent.Inventory);
                    w.WriteEndObject();
                    break;
                case "/certs":
                    w.WriteStartObject();
                    WriteCertificates(w, _agent.Certificates);
                    w.WriteEndObject();
                    break;
                case "/ready":
                    w.WriteStartObject();
                    var ready = _agent.Ready;
                    if (!ready)
                    {
                        response.StatusCode = 503;
                    }

                    w.WriteBoolean("ready", ready);
                    w.WriteEndObject();
                    break;
                default:
                    response.StatusCode = 404;
                    WriteError(w, $"no such path {path}; try /flows, /config_dump, /workloads, /services, /policies, /certs, /ready");
                    break;
            }
        }

        response.ContentLength64 = body.Length;
        response.OutputStream.Write(body.GetBuffer(), 0, (int)body.Length);
    }

    private static void WriteError(Utf8JsonWriter w, string message)
    {
        w.WriteStartObject();
        w.WriteString("error", message);
        w.WriteEndObject();
    }

    /// <summary>Live and finished flows that match, each list by start time; <c>last</c> counts over both.</summary>
    internal static void WriteFlows(Utf8JsonWriter w, FlowTable table, FlowFilter filter)
    {
        var live = table.Live();
        var recent = table.Recent();
        var chosen = filter.Apply(live.Concat(recent), f => f).ToHashSet();
        w.WriteStartObject();
        w.WriteString("now", DateTimeOffset.UtcNow);
        w.WriteStartArray("live");
        foreach (var flow in filter.Apply(live.Where(chosen.Contains), f => f))
        {
            flow.WriteJson(w);
        }

        w.WriteEndArray();
        w.WriteStartArray("recent");
        foreach (var flow in filter.Apply(recent.Where(chosen.Contains), f => f))
        {
            flow.WriteJson(w);
        }

        w.WriteEndArray();
        w.WriteEndObject();
    }

    private void WriteConfig(Utf8JsonWriter w)
    {
        var snapshot = _agent.Inventory;
        w.WriteStartObject();
        w.WriteString("node", _agent.NodeName);
        w.WriteNumber("inventory_version", snapshot.Version);
        w.WriteString("inventory_loaded_at", snapshot.LoadedAt);
        w.WriteStartArray("enrolled_pods");
        foreach (var pod in _agent.EnrolledPods)
        {
            w.WriteStringValue(pod);
        }

        w.WriteEndArray();
        WriteWorkloads(w, snapshot);
        WriteServices(w, snapshot);
        WritePolicies(w, snapshot);
        WriteCertificates(w, _agent.Certificates);
        w.WriteEndObject();
    }

    internal static void WriteWorkloads(Utf8JsonWriter w, InventorySnapshot snapshot)
    {
        w.WriteStartArray("workloads");
        foreach (var workload in snapshot.Workloads.OrderBy(x => x.Namespace, StringComparer.Ordinal).ThenBy(x => x.Name, StringComparer.Ordinal))
        {
            w.WriteStartObject();
            w.WriteString("name", $"{workload.Namespace}/{workload.Name}");
            w.WriteString("namespace", workload.Namespace);
            w.WriteString("pod", workload.Name);
            w.WriteString("workload", WorkloadNames.WorkloadName(workload.Name, workload.Labels));
            w.WriteString("node", workload.NodeName);
            w.WriteString("service_account", workload.ServiceAccount);
            w.WriteString("ips", string.Join(',', workload.Addresses));
            w.WriteBoolean("enrolled", workload.Enrolled);
            w.WriteBoolean("host_network", workload.HostNetwork);
            w.WriteString("protocol", workload.Enrolled && !workload.HostNetwork ? "HBONE" : "TCP");
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    internal static void WriteServices(Utf8JsonWriter w, InventorySnapshot snapshot)
    {
        w.WriteStartArray("services");
        foreach (var service in snapshot.Services.OrderBy(x => x.Namespace, StringComparer.Ordinal).ThenBy(x => x.Name, StringComparer.Ordinal))
        {
            w.WriteStartObject();
            w.WriteString("name", $"{service.Namespace}/{service.Name}");
            w.WriteString("namespace", service.Namespace);
            w.WriteString("service", service.Name);
            w.WriteString("vips", string.Join(',', service.ClusterIps));
            w.WriteString("ports", string.Join(',', service.Ports.Select(p =>
                $"{p.Port}/{p.Protocol}->{(p.TargetPortNumber?.ToString(CultureInfo.InvariantCulture) ?? p.TargetPortName ?? p.Port.ToString(CultureInfo.InvariantCulture))}")));
            w.WriteNumber("endpoints", service.Endpoints.Length);
            w.WriteNumber("ready_endpoints", service.Endpoints.Count(e => e.Ready));
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    internal static void WritePolicies(Utf8JsonWriter w, InventorySnapshot snapshot)
    {
        var set = snapshot.Policies;
        w.WriteStartArray("policies");
        foreach (var policy in set.MeshPolicies.Concat(set.PoliciesByNamespace.Values.SelectMany(p => p))
            .OrderBy(p => p.Namespace, StringComparer.Ordinal).ThenBy(p => p.Name, StringComparer.Ordinal))
        {
            w.WriteStartObject();
            w.WriteString("kind", "AuthorizationPolicy");
            w.WriteString("namespace", policy.Namespace);
            w.WriteString("name", policy.Name);
            w.WriteString("action", policy.Action.ToString().ToUpperInvariant());
            w.WriteString("scope", Scope(set, policy.Namespace, policy.Selector));
            w.WriteNumber("rules", policy.Rules.Length);
            w.WriteEndObject();
        }

        foreach (var mode in new[] { set.MeshMode }.Concat(set.MeshWorkloadModes).Concat(set.NamespaceModes.Values).Concat(set.WorkloadModes.Values.SelectMany(p => p))
            .OfType<CompiledPeerAuthentication>().DistinctBy(p => (p.Namespace, p.Name))
            .OrderBy(p => p.Namespace, StringComparer.Ordinal).ThenBy(p => p.Name, StringComparer.Ordinal))
        {
            w.WriteStartObject();
            w.WriteString("kind", "PeerAuthentication");
            w.WriteString("namespace", mode.Namespace);
            w.WriteString("name", mode.Name);
            w.WriteString("action", mode.Mode?.ToString().ToUpperInvariant() ?? "UNSET");
            w.WriteString("scope", Scope(set, mode.Namespace, mode.Selector));
            w.WriteNumber("rules", 0);
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    private static string Scope(Weft.Policy.PolicySet set, string ns, KeyValuePair<string, string>[]? selector) =>
        selector is { Length: > 0 } ? "WorkloadSelector:" + string.Join(',', selector.Select(p => $"{p.Key}={p.Value}"))
        : ns == set.MeshRootNamespace ? "Global"
        : "Namespace";

    internal static void WriteCertificates(Utf8JsonWriter w, IReadOnlyList<CertificateEntry> certificates)
    {
        var now = DateTimeOffset.UtcNow;
        w.WriteStartArray("certificates");
        foreach (var entry in certificates)
        {
            var cert = entry.Certificate;
            var notBefore = new DateTimeOffset(cert.NotBefore.ToUniversalTime());
            var notAfter = new DateTimeOffset(cert.NotAfter.ToUniversalTime());
            w.WriteStartObject();
            w.WriteString("name", entry.Name);
            w.WriteString("type", entry.Type);
            w.WriteString("status", now < notBefore ? "NotYetValid" : now > notAfter ? "Expired" : "Available");
            w.WriteBoolean("valid", now >= notBefore && now <= notAfter);
            w.WriteString("serial_number", cert.SerialNumber.ToLowerInvariant());
            w.WriteString("subject", cert.Subject);
            w.WriteString("issuer", cert.Issuer);
            w.WriteString("not_before", notBefore);
            w.WriteString("not_after", notAfter);
            if (entry.RenewAt is { } renew)
            {
                w.WriteString("renew_at", renew);
            }

            // The public certificate only: the private key never leaves the agent.
            w.WriteString("pem", cert.ExportCertificatePem());
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }
}
