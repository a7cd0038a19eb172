using System.Collections.Immutable;
using System.Net;

namespace Weft.Inventory;

/// <summary>
/// What a connection to a service VIP and port resolves to: the service, its port, and the ready
/// endpoints of the VIP's address family. <see cref="Pick"/> spreads connections round-robin without locks.
/// </summary>
internal sealed class ServiceTarget
{
    // Incremented by every Pick; wraps around harmlessly because only its value modulo the endpoint count matters.
    private int _next;

    internal ServiceTarget(Service service, ServicePort port, IPEndPoint vip, ImmutableArray<IPEndPoint> readyEndpoints)
    {
        Service = service;
        Port = port;
        Vip = vip;
        ReadyEndpoints = readyEndpoints;

        // Each snapshot makes new targets; starting at a random slot keeps frequent reloads from
        // sending the first connection after every reload to the same endpoint.
        _next = readyEndpoints.Length > 1 ? Random.Shared.Next(readyEndpoints.Length) : 0;
    }

    public Service Service { get; }

    public ServicePort Port { get; }

    /// <summary>The cluster IP and service port this target answers for.</summary>
    public IPEndPoint Vip { get; }

    /// <summary>Ready endpoints (address and port) of the VIP's family, without duplicates.</summary>
    public ImmutableArray<IPEndPoint> ReadyEndpoints { get; }

    /// <summary>The next endpoint in round-robin order, or null when the service has no ready endpoint.</summary>
    public IPEndPoint? Pick()
    {
        var endpoints = ReadyEndpoints;
        if (endpoints.IsEmpty)
        {
            return null;
        }

        var slot = (uint)Interlocked.Increment(ref _next) % (uint)endpoints.Length;
        return endpoints[(int)slot];
    }

    public override string ToString() => $"{Service} {Vip} -> {ReadyEndpoints.Length} ready";
}
