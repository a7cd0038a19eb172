using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using k8s;
using k8s.Models;

namespace Weft.Gateway;

/// <summary>Where the gateway says it can be reached, in Ingress and Gateway status.</summary>
internal sealed record GatewayStatusOptions
{
    /// <summary>Addresses (IPs or hostnames) given on the command line; when set, <see cref="PublishService"/> is not read.</summary>
    public IReadOnlyList<string> Addresses { get; init; } = [];

    /// <summary>"namespace/name" of the gateway's own Service, whose load balancer addresses (or external IPs) are published.</summary>
    public string? PublishService { get; init; }

    /// <summary>
    /// The Gateways ("namespace/name") that say they are somewhere else: those served on addresses of their own
    /// (--gateway-http, --gateway-https), each with its own addresses or Service. A Gateway not here gets the shared
    /// <see cref="Addresses"/> or <see cref="PublishService"/>; nesting beyond one level is not read.
    /// </summary>
    public IReadOnlyDictionary<string, GatewayStatusOptions> Gateways { get; init; } = new Dictionary<string, GatewayStatusOptions>();
}

/// <summary>
/// Writes status as a conformant controller does, from <see cref="GatewayStatusReport"/>: GatewayClass Accepted;
/// Gateway Accepted and Programmed with addresses and per-listener conditions, supportedKinds and attachedRoutes;
/// HTTPRoute status.parents entries of our controllerName (other controllers' entries are kept) with Accepted and
/// ResolvedRefs; Ingress status.loadBalancer. Every condition carries the object's generation as observedGeneration,
/// and keeps its lastTransitionTime while its status and reason stay the same.
/// A status equal to what the object already has is never written, and neither is one this writer just wrote
/// while the watch has not yet delivered it: our own writes come back as watch events, and must not loop.
/// Patches go to the status subresource as JSON merge patches.
/// </summary>
internal sealed class GatewayStatusWriter(IKubernetes client, GatewayStatusOptions options)
{
    private readonly Dictionary<string, (string Status, string? ResourceVersion)> _written = new(StringComparer.Ordinal);
    private readonly HashSet<string> _failing = new(StringComparer.Ordinal);
    private long _writes;

    public long Writes => Interlocked.Read(ref _writes);

    /// <summary>Writes what changed; false when some write failed (logged once per object until it succeeds).</summary>
    public async Task<bool> WriteAsync(IReadOnlyList<IKubernetesObject> objects, GatewayStatusReport report, CancellationToken cancellationToken)
    {
        var now = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture);
        var addresses = Addresses(options, objects);
        var ok = true;
        foreach (var gatewayClass in objects.OfType<GatewayClassResource>().Where(c => report.AcceptedClasses.Contains(c.Metadata.Name)))
        {
            var status = new JsonObject
            {
                ["conditions"] = Conditions([new ConditionReport("Accepted", true, "Accepted", $"handled by {GatewayApiKinds.ControllerName}")], gatewayClass.Metadata, gatewayClass.Status?["conditions"], now),
            };
            ok &= await PatchAsync("GatewayClass", gatewayClass.Metadata, gatewayClass.Status, status,
                body => client.CustomObjects.PatchClusterCustomObjectStatusAsync(body, GatewayApiKinds.Group, "v1", "gatewayclasses", gatewayClass.Metadata.Name, cancellationToken: cancellationToken), cancellationToken).ConfigureAwait(false);
        }

        foreach (var gateway in objects.OfType<GatewayResource>())
        {
            var key = $"{Namespace(gateway.Metadata)}/{gateway.Metadata.Name}";
            if (!report.Gateways.TryGetValue(key, out var listeners))
            {
                continue;
            }

            // A Gateway on an address of its own says so, and only that (none known yet: not Programmed, as for the shared one).
            var own = options.Gateways.GetValueOrDefault(key);
            ok &= await PatchAsync("Gateway", gateway.Metadata, gateway.Status, GatewayStatus(gateway, listeners, own is null ? addresses : Addresses(own, objects), own is not null, now),
                body => client.CustomObjects.PatchNamespacedCustomObjectStatusAsync(body, GatewayApiKinds.Group, "v1", Namespace(gateway.Metadata), "gateways", gateway.Metadata.Name, cancellationToken: cancellationToken), cancellationToken).ConfigureAwait(false);
        }

        foreach (var route in objects.OfType<HttpRouteResource>())
        {
            var key = $"{Namespace(route.Metadata)}/{route.Metadata.Name}";
            var current = route.Status?["parents"] as JsonArray;
            var ours = report.Routes.GetValueOrDefault(key) ?? [];
            var hadOurs = current?.Any(p => p?["controllerName"]?.GetValue<string>() == GatewayApiKinds.ControllerName) == true;
            if (ours.Count == 0 && !hadOurs)
            {
                continue;
            }

            var parents = new JsonArray();
            foreach (var other in current?.Where(p => p?["controllerName"]?.GetValue<string>() != GatewayApiKinds.ControllerName) ?? [])
            {
                parents.Add(other!.DeepClone());
            }

            foreach (var parent in ours)
            {
                var previous = current?.FirstOrDefault(p => p?["controllerName"]?.GetValue<string>() == GatewayApiKinds.ControllerName
                    && JsonNode.DeepEquals(p?["parentRef"], ParentRef(parent.ParentRef)))?["conditions"];
                // Added as a JsonNode: the generic Add<T> would wrap it through reflection, which a trimmed build lacks.
                parents.Add((JsonNode)new JsonObject
                {
                    ["parentRef"] = ParentRef(parent.ParentRef),
                    ["controllerName"] = GatewayApiKinds.ControllerName,
                    ["conditions"] = Conditions(parent.PartiallyInvalid is { } partially ? [parent.Accepted, parent.ResolvedRefs, partially] : [parent.Accepted, parent.ResolvedRefs], route.Metadata, previous, now),
                });
            }

            ok &= await PatchAsync("HTTPRoute", route.Metadata, route.Status, new JsonObject { ["parents"] = parents },
                body => client.CustomObjects.PatchNamespacedCustomObjectStatusAsync(body, GatewayApiKinds.Group, "v1", Namespace(route.Metadata), "httproutes", route.Metadata.Name, cancellationToken: cancellationToken), cancellationToken).ConfigureAwait(false);
        }

        if (addresses.Count > 0)
        {
            foreach (var ingress in objects.OfType<V1Ingress>().Where(i => report.Ingresses.Contains($"{Namespace(i.Metadata)}/{i.Metadata.Name}")))
            {
                var loadBalancer = new JsonArray([.. addresses.Select(a => (JsonNode)new JsonObject { [IPAddress.TryParse(a, out _) ? "ip" : "hostname"] = a })]);
                var desired = new JsonObject { ["loadBalancer"] = new JsonObject { ["ingress"] = loadBalancer } };
                var current = JsonNode.Parse(KubernetesJson.Serialize(ingress.Status ?? new V1IngressStatus()))?.AsObject();
                ok &= await PatchAsync("Ingress", ingress.Metadata, current, desired,
                    body => client.NetworkingV1.PatchNamespacedIngressStatusAsync(body, ingress.Metadata.Name, Namespace(ingress.Metadata), cancellationToken: cancellationToken), cancellationToken).ConfigureAwait(false);
            }
        }

        return ok;
    }

    private static JsonObject GatewayStatus(GatewayResource gateway, List<ListenerReport> listeners, IReadOnlyList<string> addresses, bool ownAddress, string now)
    {
        var previousListeners = gateway.Status?["listeners"] as JsonArray;
        var listenerStatus = new JsonArray();
        foreach (var listener in listeners)
        {
            var previous = previousListeners?.FirstOrDefault(l => l?["name"]?.GetValue<string>() == listener.Name)?["conditions"];
            listenerStatus.Add((JsonNode)new JsonObject
            {
                ["name"] = listener.Name,
                ["supportedKinds"] = new JsonArray([.. listener.SupportedKinds.Select(k => (JsonNode)new JsonObject { ["group"] = GatewayApiKinds.Group, ["kind"] = k })]),
                ["attachedRoutes"] = listener.AttachedRoutes,
                ["conditions"] = Conditions(listener.Conditions, gateway.Metadata, previous, now),
            });
        }

        var anyProgrammed = listeners.Any(l => l.Conditions.Any(c => c.Type == "Programmed" && c.Status));
        var programmed = addresses.Count == 0 ? new ConditionReport("Programmed", false, "AddressNotAssigned", ownAddress
                ? "no address of its own known yet (--gateway-status-address or the --gateway-publish-service Service's load balancer)"
                : "no address known yet (--status-address or the --publish-service Service's load balancer)")
            : anyProgrammed ? new ConditionReport("Programmed", true, "Programmed", "serving")
            : new ConditionReport("Programmed", false, "Invalid", "no listener is served");
        return new JsonObject
        {
            ["addresses"] = new JsonArray([.. addresses.Select(a => (JsonNode)new JsonObject { ["type"] = IPAddress.TryParse(a, out _) ? "IPAddress" : "Hostname", ["value"] = a })]),
            ["conditions"] = Conditions([new ConditionReport("Accepted", true, "Accepted", "accepted"), programmed], gateway.Metadata, gateway.Status?["conditions"], now),
            ["listeners"] = listenerStatus,
        };
    }

    /// <summary>The conditions as Gateway API writes them; a condition whose status and reason did not change keeps its lastTransitionTime.</summary>
    private static JsonArray Conditions(IEnumerable<ConditionReport> conditions, V1ObjectMeta metadata, JsonNode? previous, string now)
    {
        var result = new JsonArray();
        foreach (var condition in conditions)
        {
            var status = condition.Status ? "True" : "False";
            var before = (previous as JsonArray)?.FirstOrDefault(c => c?["type"]?.GetValue<string>() == condition.Type);
            var unchanged = before?["status"]?.GetValue<string>() == status && before?["reason"]?.GetValue<string>() == condition.Reason;
            result.Add((JsonNode)new JsonObject
            {
                ["type"] = condition.Type,
                ["status"] = status,
                ["reason"] = condition.Reason,
                ["message"] = condition.Message,
                ["observedGeneration"] = metadata.Generation ?? 0,
                ["lastTransitionTime"] = unchanged ? before?["lastTransitionTime"]?.DeepClone() ?? now : now,
            });
        }

        return result;
    }

    private static JsonObject ParentRef(ObjectReference reference)
    {
        var node = new JsonObject
        {
            ["group"] = reference.Group ?? GatewayApiKinds.Group,
            ["kind"] = reference.Kind ?? "Gateway",
        };
        if (reference.Namespace is { } ns)
        {
            node["namespace"] = ns;
        }

        node["name"] = reference.Name;
        if (reference.SectionName is { } section)
        {
            node["sectionName"] = section;
        }

        if (reference.Port is { } port)
        {
            node["port"] = port;
        }

        return node;
    }

    /// <summary>Patches when the desired status differs from the object's; true when nothing failed.</summary>
    private async Task<bool> PatchAsync(string kind, V1ObjectMeta metadata, JsonObject? current, JsonObject desired, Func<V1Patch, Task> patch, CancellationToken cancellationToken)
    {
        var key = $"{kind} {Namespace(metadata)}/{metadata.Name}";
        if (Contains(current, desired))
        {
            return true;
        }

        var text = WithoutTimes(desired.DeepClone()).ToJsonString();
        if (_written.TryGetValue(key, out var written) && written.Status == text && written.ResourceVersion == metadata.ResourceVersion)
        {
            return true; // written; the watch has not delivered it yet
        }

        try
        {
            await patch(new V1Patch(new JsonObject { ["status"] = desired }.ToJsonString(), V1Patch.PatchType.MergePatch)).ConfigureAwait(false);
            _written[key] = (text, metadata.ResourceVersion);
            Interlocked.Increment(ref _writes);
            if (_failing.Remove(key))
            {
                Log.Info("gateway", $"status of {key} written again");
            }

            Log.Debug("gateway", $"status of {key} written: {text}");
            return true;
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            if (_failing.Add(key))
            {
                Log.Warn("gateway", $"writing the status of {key} failed ({ex.Message}); retrying. Does the gateway's ClusterRole grant patch on its status?");
            }

            return false;
        }
    }

    /// <summary>True when every field of <paramref name="desired"/> is in <paramref name="current"/> with the same value (lastTransitionTime aside, it is carried over).</summary>
    private static bool Contains(JsonNode? current, JsonNode? desired) => desired switch
    {
        JsonObject o => current is JsonObject c && o.All(p => Contains(c[p.Key], p.Value)),
        JsonArray a => current is JsonArray c && c.Count == a.Count && a.Select((item, i) => Contains(c[i], item)).All(x => x),
        null => current is null,
        _ => JsonNode.DeepEquals(current, desired),
    };

    private static JsonNode WithoutTimes(JsonNode node)
    {
        switch (node)
        {
            case JsonObject o:
                o.Remove("lastTransitionTime");
                foreach (var (_, value) in o)
                {
                    if (value is not null)
                    {
                        WithoutTimes(value);
                    }
                }

                break;
            case JsonArray a:
                foreach (var item in a)
                {
                    if (item is not null)
                    {
                        WithoutTimes(item);
                    }
                }

                break;
        }

        return node;
    }

    /// <summary>The flag's addresses, else the published Service's load balancer addresses, else its external IPs.</summary>
    private static IReadOnlyList<string> Addresses(GatewayStatusOptions options, IReadOnlyList<IKubernetesObject> objects)
    {
        if (options.Addresses.Count > 0)
        {
            return options.Addresses;
        }

        if (options.PublishService?.Split('/') is not [var ns, var name])
        {
            return [];
        }

        var service = objects.OfType<V1Service>().FirstOrDefault(s => Namespace(s.Metadata) == ns && s.Metadata.Name == name);
        var fromBalancer = service?.Status?.LoadBalancer?.Ingress?.Select(i => i.Ip ?? i.Hostname).OfType<string>().ToList() ?? [];
        return fromBalancer.Count > 0 ? fromBalancer : service?.Spec?.ExternalIPs?.ToList() ?? [];
    }

    private static string Namespace(V1ObjectMeta metadata) => string.IsNullOrEmpty(metadata.NamespaceProperty) ? "default" : metadata.NamespaceProperty;
}
